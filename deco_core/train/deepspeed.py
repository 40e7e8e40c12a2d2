"""DeepSpeed integration: the ZeRO config and engine construction with our AdamW and LR schedule.

The ZeRO settings come from the composed train config (``TrainConfig.deepspeed_config``, filled from
conf/deepspeed/<name>.yaml at compose time by ``deco_core.config_deepspeed``): nothing here reads conf/, so
a worker trains with exactly the settings the driver logged. Batch sizes, precision and clipping are added
from the train config. On CPU it runs on gloo with fp32 and avoids DeepSpeed's JIT-compiled ops (torch
AdamW; the shm comm op disabled)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from deco_core.config import ConfigError, TrainConfig
from deco_core.train.schedule import build_scheduler, param_groups

log = logging.getLogger(__name__)


def resolve_precision(t: TrainConfig, use_gpu: bool) -> str:
    if t.precision != "auto":
        return t.precision
    return "bf16" if use_gpu else "fp32"


def build_ds_config(t: TrainConfig, world_size: int, use_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict for a stage; validates global = micro × accumulation × world size."""
    if not t.deepspeed_config:
        raise ConfigError(f"stage {t.stage}: deepspeed_config is empty; it is filled from "
                          f"conf/deepspeed/{t.deepspeed}.yaml when the config is composed (deco_core.config.compose)")
    ds = copy.deepcopy(dict(t.deepspeed_config))
    accum = t.grad_accum_steps(world_size)
    ds.update({
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": t.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    })
    precision = resolve_precision(t, use_gpu)
    if precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if _offloads_optimizer(ds):
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": t.lr, "betas": list(t.betas), "eps": 1e-8,
                                                       "weight_decay": t.weight_decay, "torch_adam": True}}
    return ds


def _offloads_optimizer(ds: dict[str, Any]) -> bool:
    off = ds.get("zero_optimization", {}).get("offload_optimizer") or {}
    return off.get("device", "none") not in (None, "none")


def disable_jit_comm_op() -> None:
    """Skip building DeepSpeed's shared-memory comm op (inference-only; a 26 s C++ compile on first use)."""
    try:
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    except (ImportError, AttributeError, KeyError, TypeError) as exc:
        log.debug("could not disable the shm comm op (%s); DeepSpeed may compile it", exc)


def build_engine(model: torch.nn.Module, t: TrainConfig, world_size: int, use_gpu: bool, total_steps: int):
    """deepspeed.initialize with weight-decay groups, AdamW and the warmup + decay schedule."""
    import deepspeed

    disable_jit_comm_op()
    ds = build_ds_config(t, world_size, use_gpu)
    groups = param_groups(model, t.weight_decay, {"projector": t.projector_lr} if t.projector_lr else None)
    if not groups:
        raise ValueError(f"stage {t.stage}: no trainable parameters (check train_vision/projector/llm)")
    def make_scheduler(optimizer):  # DeepSpeed calls this with its basic (unwrapped) optimizer
        return build_scheduler(optimizer, total_steps, t.warmup_ratio, t.schedule, t.min_lr_ratio)

    if "optimizer" in ds:  # optimizer offload: DeepSpeed builds the (torch) AdamW itself
        engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=ds,
                                          lr_scheduler=make_scheduler)
    else:
        optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), eps=1e-8)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds, lr_scheduler=make_scheduler)
    return engine
