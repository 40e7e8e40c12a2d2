"""Loss evaluation shared by the trainer (validation) and by users of exported models: the token-weighted mean
next-token loss over every learned label, independent of batch composition and order."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from deco_core.data.conversation import IGNORE_INDEX


@torch.no_grad()
def mean_token_loss(model: Callable[..., Any], batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Σ(per-batch mean loss × learned tokens) / Σ learned tokens, over ``batches`` from ``ray_data.collate``."""
    total, tokens = 0.0, 0
    for batch in batches:
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # labels are shifted inside the LM loss
        if n == 0:
            continue
        out = model(**batch)
        total += float(out.loss) * n
        tokens += n
    if tokens == 0:
        raise ValueError("no learned tokens in the evaluation batches")
    return total / tokens
