"""Preprocessed training data kept on the driver for the next stage that reads the same data the same way.

A grid of workflows in one driver (``make reproduce``: every projector at one M trains on the same shards through
the same tokenizer, template, image-token count and max length) would otherwise preprocess identical samples
once per stage: 5-9 s of every stage on two cores. Inside ``hold_preprocessed()`` a stage whose data key matches
an earlier stage's takes that stage's materialized per-worker shards instead, and its stage monitor receives the
sample counts that pass made, so its quality check and ``data/*`` metrics are the ones a fresh pass would give.

The key is a hash of everything the rows depend on: each source's URI, weight and manifest rows (shard URL,
bytes, samples: shards are written whole, so changed data changes the manifest), the preprocessing spec (the
tokenizer's class, vocabulary and specials, the template, image tokens, max length and image transform) and the
row plan (samples per epoch, workers, preprocessing batch). Outside the block nothing is kept: a standalone
workflow never holds object-store memory for a stage that will not come. Entries are evicted oldest first.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from deco_core.data.ray_data import PreprocessSpec
from deco_core.data.shards import read_manifest
from deco_core.model.tokenizer_view import TokenizerView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessed:
    """One stage's preprocessed rows, as a later stage with the same key reuses them."""

    shards: list[Any]
    """One materialized Ray Dataset per worker."""
    rows: int
    counts: dict[str, int]
    """Sample counts (seen, bad reasons) the preprocessing pass added to its stage monitor."""


_KEPT: OrderedDict[str, Preprocessed] = OrderedDict()
_CAPACITY = 0  # 0 outside hold_preprocessed(): nothing is kept


@contextmanager
def hold_preprocessed(capacity: int = 2) -> Iterator[None]:
    """Stages run inside this block reuse each other's preprocessed data when their keys match; the ``capacity``
    most recent entries are kept (2: a workflow's pretrain and finetune data). Everything is dropped on exit."""
    global _CAPACITY
    if capacity < 1:
        raise ValueError(f"hold_preprocessed: capacity must be >= 1, got {capacity}")
    outer = _CAPACITY
    _CAPACITY = max(outer, capacity)
    try:
        yield
    finally:
        _CAPACITY = outer
        if not outer:
            _KEPT.clear()


def holding() -> bool:
    """True inside ``hold_preprocessed()``."""
    return _CAPACITY > 0


def _tokenizer_identity(tokenizer: Any) -> str:
    """A hash of what the tokenizer maps text to: a ``TokenizerView``'s backend JSON and special ids, else the
    vocabulary and special tokens of a transformers tokenizer."""
    state = tokenizer.__getstate__() if isinstance(tokenizer, TokenizerView) else None
    if state is not None:
        body: Any = state
    else:
        body = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items()),
                "specials": sorted(map(str, getattr(tokenizer, "all_special_tokens", []))),
                "pad": getattr(tokenizer, "pad_token_id", None)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def data_key(sources: list[tuple[str, float]], spec: PreprocessSpec, storage: Any, plan: dict[str, Any]) -> str:
    """The hash of everything a stage's preprocessed rows depend on (see the module docstring)."""
    manifests = []
    for uri, weight in sources:
        m = read_manifest(uri, storage)
        manifests.append({"uri": uri, "weight": float(weight),
                          "rows": [[r.url, r.bytes, r.samples] for r in m.rows]})
    body = {"sources": manifests, "tokenizer": _tokenizer_identity(spec.tokenizer), "template": spec.template,
            "image_tokens": spec.num_image_tokens, "max_length": spec.max_length,
            "image_token_id": spec.image_token_id, "transform": repr(spec.transform), "plan": plan}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lookup(key: str | None) -> Preprocessed | None:
    """The kept entry for ``key`` (and marks it most recent), or None."""
    if key is None or key not in _KEPT:
        return None
    _KEPT.move_to_end(key)
    return _KEPT[key]


def keep(key: str | None, entry: Preprocessed) -> None:
    """Keep ``entry`` under ``key`` while inside ``hold_preprocessed()``; evicts the oldest beyond capacity."""
    if key is None or not _CAPACITY:
        return
    _KEPT[key] = entry
    _KEPT.move_to_end(key)
    while len(_KEPT) > _CAPACITY:
        dropped, _ = _KEPT.popitem(last=False)
        log.debug("preprocessed data %s evicted", dropped)


__all__ = ["Preprocessed", "data_key", "hold_preprocessed", "holding", "keep", "lookup"]
