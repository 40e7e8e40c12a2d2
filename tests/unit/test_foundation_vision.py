"""The foundation vision tower build (pipelines/foundation_vision.py) and how the pipeline loads it: the shipped
build config, refusals, the size guard, the committed tower loaded bit for bit and frozen in both stages."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deco_core.config import ConfigError
from deco_core.model.builds import FOUNDATION_MANIFEST
from deco_core.model.vision import SIZE_KEYS, build_vision_tower
from pipelines.foundation_vision import (
    DEFAULT_CONFIG,
    VisionFoundationConfig,
    build_config,
    load_vision_config,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_build_config_trains_a_new_tower_with_the_all_patch_projector():
    vc = load_vision_config(DEFAULT_CONFIG)
    cfg = build_config(vc, steps=7)
    t = cfg.pretrain
    assert (t.train_vision, t.train_projector, t.train_llm) == (True, True, False)
    assert t.max_steps == 7 and cfg.model.vision.path is None and cfg.model.projector.name == "mlp"
    assert cfg.pipeline.root == vc.root and cfg.model.llm.path  # the foundation LLM, frozen


def test_the_shipped_dense_build_config_trains_a_new_tower_on_patch_labels_beside_the_default():
    vc = load_vision_config(DEFAULT_CONFIG.parent / "vision_tiny_dense.yaml")
    cfg = build_config(vc)
    assert vc.objective == "dense" and set(vc.targets) == {"shape", "colour", "size", "box"}
    assert vc.name == "vision-dense" and vc.init is None and cfg.model.vision.path is None
    assert cfg.pretrain.train_vision and cfg.pretrain.max_steps == 1500


def test_a_build_that_would_not_train_a_new_tower_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="model.vision.path=.*trains a new tower"):
        build_config(VisionFoundationConfig(overrides=[f"model.vision.path={tmp_path}"]))
    with pytest.raises(ConfigError, match="pretrain.train_vision=false"):
        build_config(VisionFoundationConfig(overrides=["model.vision.path=null", "pretrain.train_vision=false"]))
    bad = tmp_path / "v.yaml"
    bad.write_text("rooot: x\n")
    with pytest.raises(ConfigError, match="v.yaml: .*rooot"):
        load_vision_config(bad)


def test_a_tower_built_with_other_sizes_is_refused_with_the_rebuild_command(tmp_path, tiny_cfg):
    tower = build_vision_tower(replace(tiny_cfg.model.vision, path=None))
    tower.model.save_pretrained(tmp_path)
    vision = replace(tiny_cfg.model.vision, path=str(tmp_path))
    sizes = {k: getattr(vision, k) for k in SIZE_KEYS}
    (tmp_path / FOUNDATION_MANIFEST).write_text(json.dumps({"vision": sizes}))
    build_vision_tower(vision)  # the same sizes load
    with pytest.raises(ValueError, match=r"model.vision.hidden_size=96 \(built: 64\).*make foundation-vision"):
        build_vision_tower(replace(vision, hidden_size=96))
    (tmp_path / FOUNDATION_MANIFEST).unlink()
    build_vision_tower(vision)  # a plain checkpoint (no manifest) is not checked


def test_the_committed_tower_is_what_the_tiny_pipeline_loads_and_it_stays_frozen(tiny_cfg):
    from deco_core.model.deco import DecoModel

    path = Path(tiny_cfg.model.vision.path)
    assert path.is_absolute() and path == REPO / "artifacts" / "foundation" / "tiny" / "vision-dense"
    manifest = json.loads((path / FOUNDATION_MANIFEST).read_text())  # built by conf/foundation/vision_tiny_dense.yaml
    assert manifest["build"]["objective"] == "dense" and manifest["train"]["train_vision"]
    assert manifest["projector"] is None and set(manifest["patch_accuracy"]) == {"shape", "colour", "size"}
    model = DecoModel.from_config(tiny_cfg.model)
    saved = load_file(str(path / "model.safetensors"))
    loaded = model.vision.model.state_dict()
    assert saved and all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert not tiny_cfg.pretrain.train_vision and not tiny_cfg.finetune.train_vision
    for stage in ("pretrain", "finetune"):
        t = getattr(tiny_cfg, stage)
        model.freeze_for_stage(stage, t.train_vision, t.train_projector, t.train_llm)
        assert not any(p.requires_grad for p in model.vision.parameters())
