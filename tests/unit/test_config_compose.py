"""Composing a config: torch-free, enum-like fields checked with their choices, DeepSpeed settings composed in."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from deco_core.config import ConfigError, TrainConfig, compose, flatten, from_dict, to_dict
from deco_core.train.deepspeed import build_ds_config


def test_compose_imports_no_torch() -> None:
    """`compose("pipeline/tiny")` in a fresh interpreter leaves torch out of sys.modules."""
    code = (
        "import sys; from deco_core.config import compose; compose('pipeline/tiny', []); "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('deco_core'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(("override", "key", "choice"), [
    ("pretrain.schedule=cosin", "pretrain.schedule", "constant"),
    ("finetune.precision=fp8", "finetune.precision", "bf16"),
    ("pretrain.stage=midtrain", "pretrain.stage", "finetune"),
    ("retrain.init=warm", "retrain.init", "scratch"),
    ("ray.log_level=LOUD", "ray.log_level", "WARNING"),
    ("pretrain.deepspeed=zero9", "pretrain.deepspeed", "zero3_offload"),
    ("model.projector.mode=median", "model.projector", "avg"),
])  # fmt: skip
def test_enum_fields_name_key_value_and_choices(override: str, key: str, choice: str) -> None:
    """A value outside an enum-like field's choices fails at compose time naming the key, value and choices."""
    with pytest.raises(ConfigError) as info:
        compose("pipeline/tiny", [override])
    message = str(info.value)
    assert key in message and override.split("=", 1)[1] in message and choice in message


def test_unknown_projector_names_the_registered_ones() -> None:
    """An unknown projector name lists every registered projector."""
    with pytest.raises(ConfigError, match="model.projector") as info:
        compose("pipeline/tiny", ["model.projector.name=perceiver"])
    assert "perceiver" in str(info.value) and "c-abstractor" in str(info.value)


def test_deepspeed_settings_are_part_of_the_resolved_config() -> None:
    """conf/deepspeed/<name>.yaml is composed into deepspeed_config; it is flattened for logging and survives
    the trip to the workers (from_dict), and entries given as overrides are merged on top."""
    cfg = compose(
        "pipeline/tiny",
        ["pretrain.deepspeed=zero3", "finetune.deepspeed_config.zero_optimization.overlap_comm=true"],
    )
    assert cfg.pretrain.deepspeed_config["zero_optimization"]["stage"] == 3
    assert cfg.finetune.deepspeed_config["zero_optimization"]["stage"] == 2
    assert cfg.finetune.deepspeed_config["zero_optimization"]["overlap_comm"] is True
    assert flatten(to_dict(cfg))["pretrain.deepspeed_config.zero_optimization.stage"] == 3
    shipped = from_dict(to_dict(cfg))
    assert shipped.pretrain.deepspeed_config == cfg.pretrain.deepspeed_config
    ds = build_ds_config(cfg.pretrain, cfg.pretrain.num_workers, use_gpu=False)
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_batch_size"] == cfg.pretrain.global_batch_size


def test_zero_stage_is_checked_and_an_uncomposed_stage_is_refused() -> None:
    """A ZeRO stage outside 0..3 fails at compose time; build_ds_config refuses settings never composed."""
    with pytest.raises(ValueError, match=r"zero_optimization.stage' = 7.*0, 1, 2, 3"):
        compose("pipeline/tiny", ["pretrain.deepspeed_config.zero_optimization.stage=7"])
    with pytest.raises(ConfigError, match="deepspeed_config is empty"):
        build_ds_config(TrainConfig(), 1, use_gpu=False)


def test_fault_injection_is_not_in_the_schema() -> None:
    """The test-only fault hook is an environment variable, not a config field."""
    assert "fail_at_step" not in {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(ConfigError):
        compose("pipeline/tiny", ["pretrain.fail_at_step=3"])


def test_stage_trainability_defaults_come_from_one_table() -> None:
    """The schema's pretrain and finetune defaults are STAGE_TRAINABLE's rows (the model's freeze uses it too)."""
    from deco_core.config import Config
    from deco_core.config_schema import STAGE_TRAINABLE

    cfg = Config()
    for stage in ("pretrain", "finetune"):
        t = getattr(cfg, stage)
        assert (t.train_vision, t.train_projector, t.train_llm) == STAGE_TRAINABLE[stage]


def test_global_batch_rule_is_shared_by_config_and_deepspeed() -> None:
    """global = micro × accumulation × workers: one function gives the accumulation or names the numbers."""
    from deco_core.config_schema import grad_accum_steps

    assert grad_accum_steps(64, 8, 2) == 4
    for bad in ((33, 8, 2), (8, 8, 2), (0, 1, 1)):
        with pytest.raises(ValueError, match="not a positive multiple"):
            grad_accum_steps(*bad)
    t = compose("pipeline/tiny", ["finetune.global_batch_size=64", "finetune.micro_batch_size=8"]).finetune
    assert build_ds_config(t, world_size=2, use_gpu=False)["gradient_accumulation_steps"] == 4
    with pytest.raises(ValueError, match="micro_batch_size × workers = 8 × 3"):
        build_ds_config(t, world_size=3, use_gpu=False)
