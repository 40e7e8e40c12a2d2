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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decay / no-decay groups (biases, norms, embeddings, queries: no decay)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_no_decay = p.ndim < 2 or any(m in name.lower() for m in NO_DECAY_MARKERS)
        (no_decay if is_no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
