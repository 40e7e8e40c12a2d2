"""Learning-rate schedules (linear warmup, then cosine / linear decay or constant) and AdamW parameter groups."""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_MARKERS = ("bias", "norm", "embed", "query", "pos")


def lr_lambda(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, schedule: str,
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = math.ceil(total_steps * warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, total_steps, warmup, schedule, min_ratio))


def param_groups(model: nn.Module, weight_decay: float, module_lr: dict[str, float] | None = None) -> list[dict]:
    """Trainable parameters split into decay / no-decay groups (biases, norms, embeddings, queries: no decay), and
    further by top-level module when ``module_lr`` gives one its own lr (``{"projector": 1e-3}``: LLaVA's
    ``mm_projector_lr``); a group without ``lr`` takes the optimizer's."""
    module_lr = module_lr or {}
    buckets: dict[tuple[str | None, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_no_decay = p.ndim < 2 or any(m in name.lower() for m in NO_DECAY_MARKERS)
        top = name.split(".", 1)[0]
        buckets.setdefault((top if top in module_lr else None, is_no_decay), []).append(p)
    groups = []
    for (module, no_decay), params in sorted(buckets.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        group: dict = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if module is not None:
            group["lr"] = module_lr[module]
        groups.append(group)
    return groups
