"""Specification tests for the config system (deco_core/config.py) and every YAML file under conf/.

Each pipeline file composes and validates; each group file is swapped into pipeline/tiny and must land in the
composed config unchanged; bad overrides raise ConfigError naming the key, the value and what was expected.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from deco_core.config import CONF_DIR, Config, ConfigError, compose, from_dict, redact_secrets, to_dict

# Group directory -> the config key whose `defaults` entry it replaces (train/ picks by the file's `stage`).
GROUP_KEYS = {"model": "model", "projector": "model.projector", "data": "data", "eval": "eval", "train": None}


def _files(group: str) -> list[Path]:
    return sorted((CONF_DIR / group).glob("*.yaml"))


def _group_files() -> list[Path]:
    return [p for group in GROUP_KEYS for p in _files(group)]


def _rel(path: Path) -> str:
    return str(path.relative_to(CONF_DIR).with_suffix(""))


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _lookup(data: dict[str, Any], dotted: str, default: Any = KeyError) -> Any:
    """data["a"]["b"] for "a.b"; `default` where a part is missing (KeyError: raise)."""
    for part in dotted.split("."):
        if default is not KeyError and (not isinstance(data, dict) or part not in data):
            return default
        data = data[part]
    return data


@functools.cache
def _tiny_body() -> dict[str, Any]:
    """conf/pipeline/tiny.yaml as written (its own body, before composition), read once."""
    return yaml.safe_load((CONF_DIR / "pipeline" / "tiny.yaml").read_text())


# ------------------------------------------------------------------------------------------- every YAML
def test_conf_tree_is_not_empty():
    """conf/ holds at least one file per group, so the parametrized tests below cover something."""
    for group in (*GROUP_KEYS, "pipeline", "deepspeed"):
        assert _files(group), f"no YAML under conf/{group}/"


@pytest.mark.parametrize("path", _files("pipeline"), ids=_rel)
def test_pipeline_files_compose(path):
    """Every conf/pipeline/*.yaml composes (by path and by ref) into a validated Config."""
    cfg = compose(path)
    assert isinstance(cfg, Config)
    assert compose(_rel(path)) == cfg
    top = yaml.safe_load(path.read_text())
    assert cfg.pipeline.name == top["pipeline"]["name"]


@pytest.mark.parametrize("path", _group_files(), ids=_rel)
def test_group_file_swaps_into_tiny(path):
    """Each group file, swapped into pipeline/tiny by a `key=group/name` override, validates and lands unchanged,
    except for the keys pipeline/tiny.yaml sets in its own body: those win over any group's defaults (36 tokens)."""
    group = path.parent.name
    values = yaml.safe_load(path.read_text()) or {}
    key = GROUP_KEYS[group] or values.get("stage", "pretrain")
    cfg = compose("pipeline/tiny", [f"{key}={_rel(path)}"])
    composed = _lookup(to_dict(cfg), key)
    body = _leaves(_lookup(_tiny_body(), key, default={}))  # what pipeline/tiny.yaml sets itself under `key`
    for leaf, value in _leaves(values).items():
        got = _lookup(composed, leaf)
        if leaf in body:
            assert got == body[leaf], f"{_rel(path)}: {key}.{leaf} is pipeline/tiny's own {body[leaf]!r}"
            continue
        if leaf.endswith("path") and isinstance(value, str) and not value.startswith("/"):
            # a relative model path that exists in the project resolves to it, absolute (resolve_model_paths)
            assert got == value or got == str((CONF_DIR.parent / value).resolve()), f"{_rel(path)}: {key}.{leaf}"
            continue
        assert got == value, f"{_rel(path)}: {key}.{leaf}"


def test_group_swap_accepts_bare_name():
    """`model.projector=qformer` means projector/qformer, the same as the full `projector/qformer` ref."""
    bare = compose("pipeline/tiny", ["model.projector=qformer"])
    full = compose("pipeline/tiny", ["model.projector=projector/qformer"])
    assert bare == full
    assert bare.model.projector.name == "qformer"


def test_unknown_group_file_lists_valid_names():
    """Swapping in a group file that does not exist raises ConfigError listing the files of that group."""
    with pytest.raises(ConfigError, match=r"avgpol.*deco.*mlp.*qformer"):
        compose("pipeline/tiny", ["model.projector=avgpol"])


@pytest.mark.parametrize("path", _files("deepspeed"), ids=_rel)
def test_deepspeed_files_parse(path):
    """Every conf/deepspeed/*.yaml parses to a dict with zero_optimization.stage in 0..3."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    assert data["zero_optimization"]["stage"] in (0, 1, 2, 3)


# -------------------------------------------------------------------------------------- bad overrides
def test_unknown_key_names_the_key():
    """An unknown key ('pretrain.lrr=1') raises ConfigError naming 'pretrain.lrr'."""
    with pytest.raises(ConfigError, match=r"pretrain\.lrr"):
        compose("pipeline/tiny", ["pretrain.lrr=1"])


def test_bad_type_names_key_and_value():
    """A value of the wrong type ('pretrain.lr=abc') raises ConfigError naming the key and the value."""
    with pytest.raises(ConfigError) as info:
        compose("pipeline/tiny", ["pretrain.lr=abc"])
    assert "pretrain.lr" in str(info.value) and "abc" in str(info.value)


def test_unknown_projector_lists_valid_names():
    """'model.projector.name=avgpol' raises ConfigError listing every valid projector name."""
    from deco_core.model.projectors import PROJECTORS

    with pytest.raises(ConfigError) as info:
        compose("pipeline/tiny", ["model.projector.name=avgpol"])
    assert "avgpol" in str(info.value)
    for name in PROJECTORS:
        assert name in str(info.value)


def test_global_batch_must_be_divisible():
    """A global batch that is not micro × accumulation × workers raises ConfigError explaining the rule."""
    with pytest.raises(ConfigError) as info:
        compose("pipeline/tiny", ["pretrain.global_batch_size=33"])
    message = str(info.value)
    assert "pretrain.global_batch_size" in message and "33" in message
    assert "micro × accumulation × workers" in message


def test_global_batch_gives_accumulation():
    """A valid global batch yields global / (micro × workers) accumulation steps."""
    cfg = compose("pipeline/tiny", ["pretrain.global_batch_size=64", "pretrain.micro_batch_size=8"])
    assert cfg.pretrain.grad_accum_steps() == 64 // (8 * cfg.pretrain.num_workers)


def test_unknown_deepspeed_file_lists_valid():
    """An unknown deepspeed file name raises ConfigError listing the files under conf/deepspeed/."""
    with pytest.raises(ConfigError) as info:
        compose("pipeline/tiny", ["finetune.deepspeed=zero9"])
    assert "finetune.deepspeed" in str(info.value) and "zero9" in str(info.value)
    for path in _files("deepspeed"):
        assert path.stem in str(info.value)


def test_override_without_equals_is_rejected():
    """An override with no '=' raises ConfigError quoting it."""
    with pytest.raises(ConfigError, match="pretrain.lr"):
        compose("pipeline/tiny", ["pretrain.lr"])


def test_override_values_are_typed():
    """Override values parse as YAML scalars (floats, ints, bools, null)."""
    cfg = compose("pipeline/tiny", ["pretrain.lr=3e-4", "pretrain.max_steps=null", "finetune.train_vision=true"])
    assert cfg.pretrain.lr == pytest.approx(3e-4)
    assert cfg.pretrain.max_steps is None
    assert cfg.finetune.train_vision is True


# --------------------------------------------------------------------------------- defaults, helpers
def test_defaults_filled_before_validation(tmp_path):
    """A pipeline YAML without a `tracking` section (or any defaults table) gets the schema's defaults."""
    with_groups = tmp_path / "partial.yaml"
    with_groups.write_text("defaults:\n  model: model/tiny\n  pretrain: train/pretrain_tiny\npipeline:\n  name: x\n")
    cfg = compose(with_groups)
    assert cfg.tracking.experiment == "deco"
    import yaml

    group = yaml.safe_load(open("conf/train/pretrain_tiny.yaml"))
    assert cfg.pretrain.max_steps == group["max_steps"]  # from the group file
    assert cfg.finetune.stage == "finetune" and cfg.finetune.template == "vicuna_v1"  # schema default
    bare = tmp_path / "bare.yaml"
    bare.write_text("pipeline:\n  name: bare\n")
    assert compose(bare).model == Config().model


def test_redact_secrets_masks_keys_and_env_values(monkeypatch):
    """Secret-looking keys and values equal to (or containing) a secret env var are masked; the rest is kept."""
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-1234567890")
    data = {
        "storage": {"aws_secret_access_key": "abc", "aws_access_key_id": "AKIA", "endpoint_url": "http://s3"},
        "tracking": {"uri": "https://user:tok-1234567890@mlflow", "note": "tok-1234567890", "password": None},
        "list": ["tok-1234567890", 3],
    }
    out = redact_secrets(data)
    assert out["storage"]["aws_secret_access_key"] == "***"
    assert out["storage"]["endpoint_url"] == "http://s3"
    assert out["tracking"]["note"] == "***"
    assert out["tracking"]["uri"] == "https://user:***@mlflow"
    assert out["tracking"]["password"] is None
    assert out["list"] == ["***", 3]
    assert data["storage"]["aws_secret_access_key"] == "abc"  # input untouched


def test_redact_secrets_keeps_token_counts(monkeypatch):
    """Keys that merely contain 'token' as part of a word (num_tokens, max_new_tokens) are not secrets."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "disabled")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh")
    cfg = to_dict(compose("pipeline/tiny"))
    out = redact_secrets({**cfg, "hub": {"api_token": "hf_abcdefgh"}, "mode": "disabled"})
    assert out["model"]["projector"]["num_tokens"] == cfg["model"]["projector"]["num_tokens"] == 36
    assert out["eval"]["max_new_tokens"] == cfg["eval"]["max_new_tokens"]
    assert out["mode"] == "disabled"
    assert out["hub"]["api_token"] == "***"


@pytest.mark.parametrize("ref", ["pipeline/tiny", "pipeline/llava7b"])
def test_dict_roundtrip(ref):
    """from_dict(to_dict(cfg)) equals cfg, and to_dict gives plain dicts only."""
    cfg = compose(ref, ["model.projector=qformer"])
    data = to_dict(cfg)
    assert isinstance(data["model"]["projector"], dict)
    assert from_dict(data) == cfg


def test_from_dict_validates():
    """from_dict rejects invalid values with a ConfigError naming the key."""
    data = to_dict(compose("pipeline/tiny"))
    data["pretrain"]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"pretrain\.lr"):
        from_dict(data)
