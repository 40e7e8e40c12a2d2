"""The foundation LLM build (pipelines/foundation.py) and how the pipeline loads it: config errors, the atomic
export, the vocabulary guard, per-module learning rates, relative model paths."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deco_core.config import ConfigError, compose
from deco_core.model.builds import FOUNDATION_MANIFEST
from deco_core.model.llm import check_foundation
from deco_core.model.tokenizer import vocab_digest
from deco_core.train.schedule import param_groups
from pipelines.foundation import (
    DEFAULT_CONFIG,
    FoundationConfig,
    build_config,
    data_fingerprint,
    load_foundation_config,
    publish,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_build_config_loads_and_trains_the_llm_alone():
    fc = load_foundation_config(DEFAULT_CONFIG)
    cfg = build_config(fc, steps=7)
    t = cfg.finetune
    assert (t.train_vision, t.train_projector, t.train_llm) == (False, False, True)
    assert t.max_steps == 7 and cfg.model.llm.path is None and cfg.pipeline.root == fc.root


def test_the_shipped_choice_phase_goes_on_from_the_first_phase_and_writes_what_the_pipeline_loads(tiny_cfg):
    first = load_foundation_config(DEFAULT_CONFIG)
    second = load_foundation_config(DEFAULT_CONFIG.parent / "tiny_choice.yaml")
    assert second.init == f"{first.out}/{first.name}" and second.root != first.root
    cfg = build_config(second, steps=5)
    base = REPO / first.out / first.name
    assert cfg.model.llm.path == cfg.model.tokenizer.path == str(base)  # weights and their own vocabulary
    assert (cfg.finetune.train_llm, cfg.finetune.train_projector, cfg.finetune.max_steps) == (True, False, 5)
    assert Path(tiny_cfg.model.llm.path) == REPO / second.out / second.name


def test_an_init_that_holds_no_build_is_refused_with_the_build_command(tmp_path):
    with pytest.raises(ConfigError, match=r"init=.*holds no LLM build .*make foundation"):
        build_config(FoundationConfig(init=str(tmp_path / "nothing-here")))


def test_unknown_keys_and_empty_sets_name_the_file(tmp_path):
    bad = tmp_path / "f.yaml"
    bad.write_text("format_samplez: 3\n")
    with pytest.raises(ConfigError, match="f.yaml: .*format_samplez"):
        load_foundation_config(bad)
    bad.write_text("format_samples: 0\ninstruct_samples: 0\n")
    with pytest.raises(ConfigError, match="must be >= 1"):
        load_foundation_config(bad)
    with pytest.raises(ConfigError, match="foundation config not found"):
        load_foundation_config(tmp_path / "missing.yaml")


def test_a_build_that_would_train_more_than_the_llm_is_refused():
    fc = FoundationConfig(overrides=["finetune=foundation_tiny", "model.llm.path=null",
                                     "finetune.train_projector=true"])
    with pytest.raises(ConfigError, match="train the LLM alone .*train_projector=True"):
        build_config(fc)


def test_data_fingerprint_follows_the_shapes_settings():
    fc = FoundationConfig()
    a = data_fingerprint(fc, build_config(fc))
    b = data_fingerprint(fc, build_config(FoundationConfig(overrides=[*fc.overrides, "data.shapes.coord_step=0.1"])))
    c = data_fingerprint(FoundationConfig(format_samples=10), build_config(fc))
    assert len({a, b, c}) == 3


class _Saves:
    """Stands in for a model/tokenizer: writes one file, or fails half-way."""

    def __init__(self, name: str, fail: bool = False):
        self.name, self.fail = name, fail

    def save_pretrained(self, path, **_):
        (Path(path) / self.name).write_text("x")
        if self.fail:
            raise OSError("disk full")


def test_publish_swaps_in_a_complete_export_and_never_a_partial_one(tmp_path):
    final = publish([_Saves("model.safetensors"), _Saves("tokenizer.json")], {"steps": 1}, tmp_path)
    assert sorted(p.name for p in final.iterdir()) == [FOUNDATION_MANIFEST, "model.safetensors", "tokenizer.json"]
    assert json.loads((final / FOUNDATION_MANIFEST).read_text()) == {"steps": 1}
    with pytest.raises(OSError, match="disk full"):
        publish([_Saves("model.safetensors"), _Saves("tokenizer.json", fail=True)], {"steps": 2}, tmp_path)
    assert json.loads((final / FOUNDATION_MANIFEST).read_text()) == {"steps": 1}  # the old build stands
    assert [p.name for p in tmp_path.iterdir()] == ["llm"]  # no staging folder left behind


def test_publish_replaces_an_old_build_and_restores_it_when_the_swap_fails(tmp_path, monkeypatch):
    publish([_Saves("model.safetensors"), _Saves("tokenizer.json")], {"steps": 1}, tmp_path)
    final = publish([_Saves("model.safetensors"), _Saves("tokenizer.json")], {"steps": 2}, tmp_path)
    assert json.loads((final / FOUNDATION_MANIFEST).read_text()) == {"steps": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["llm"]  # the retired build is gone
    real_rename = Path.rename

    def rename(self, target):  # the staged build cannot be moved in (e.g. the folder went read-only)
        staged = Path(self).name.startswith(".llm-") and not Path(self).name.startswith(".llm-old-")
        if staged and Path(target).name == "llm":
            raise PermissionError("read-only")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(PermissionError, match="read-only"):
        publish([_Saves("model.safetensors"), _Saves("tokenizer.json")], {"steps": 3}, tmp_path)
    assert json.loads((final / FOUNDATION_MANIFEST).read_text()) == {"steps": 2}  # put back, whole
    assert [p.name for p in tmp_path.iterdir()] == ["llm"]


def test_a_build_from_another_vocabulary_or_size_is_refused_with_the_rebuild_command(tmp_path, shapes_tokenizer,
                                                                                     tiny_cfg):
    llm = replace(tiny_cfg.model.llm, path=str(tmp_path))
    sizes = {"hidden_size": llm.hidden_size, "num_layers": llm.num_layers}
    (tmp_path / FOUNDATION_MANIFEST).write_text(json.dumps({"vocab_digest": "0123456789abcdef", "llm": sizes}))
    with pytest.raises(ValueError, match=r"built with vocabulary 0123456789abcdef.*make foundation"):
        check_foundation(llm, shapes_tokenizer)
    (tmp_path / FOUNDATION_MANIFEST).write_text(json.dumps({"vocab_digest": vocab_digest(shapes_tokenizer),
                                                            "llm": sizes}))
    check_foundation(llm, shapes_tokenizer)  # the same vocabulary and sizes pass
    with pytest.raises(ValueError, match=r"model.llm.num_layers=6 \(built: 3\).*model.llm.path=null"):
        check_foundation(replace(llm, num_layers=6), shapes_tokenizer)
    check_foundation(replace(llm, path=str(tmp_path / "plain-checkpoint")), shapes_tokenizer)  # no manifest


def test_projector_lr_puts_the_projector_in_groups_of_its_own(tiny_cfg):
    from deco_core.model.deco import DecoModel

    model = DecoModel.from_config(tiny_cfg.model)
    model.freeze_for_stage("finetune")
    groups = param_groups(model, 0.1, {"projector": 1e-3})
    projector = {id(p) for p in model.projector.parameters()}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= projector if "lr" in g else not ids & projector
    assert sum(len(g["params"]) for g in groups if g.get("lr") == 1e-3) == len(projector)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    plain = param_groups(model, 0.1)
    assert all("lr" not in g for g in plain) and len(plain) == 2


def test_relative_model_paths_resolve_against_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the project root: the path must not depend on the working folder
    cfg = compose("pipeline/tiny", ["model.llm.path=conf/model", "model.vision.path=openai/clip-vit-large"])
    assert cfg.model.llm.path == str(REPO / "conf" / "model")
    assert cfg.model.vision.path == "openai/clip-vit-large"  # a hub name is left as given


def test_the_committed_foundation_llm_is_what_the_tiny_pipeline_loads(tiny_cfg):
    from deco_core.model.deco import DecoModel

    path = Path(tiny_cfg.model.llm.path)
    assert path.is_absolute() and path == REPO / "artifacts" / "foundation" / "tiny" / "llm"
    manifest = json.loads((path / FOUNDATION_MANIFEST).read_text())
    model = DecoModel.from_config(tiny_cfg.model)
    assert manifest["vocab_digest"] == vocab_digest(model.tokenizer)
    assert manifest["llm"]["hidden_size"] == model.llm.config.hidden_size == tiny_cfg.model.llm.hidden_size
    saved = load_file(str(path / "model.safetensors"))
    loaded = model.llm.state_dict()
    assert saved and all(torch.equal(loaded[k], v) for k, v in saved.items())
