"""The training sample stream of one worker, deterministic and resumable when the data is materialized.

Ray Data iterators cannot resume, so the order is made ours: the driver splits the materialized dataset into
one equal shard per rank (``split_for_workers``: a fixed assignment of rows to ranks), and each epoch of a
shard is read in an order derived only from (stage seed, epoch, rank): a seeded block order plus a seeded local
shuffle. A resumed worker rebuilds the same epoch order and skips the micro-batches the checkpoint says were
consumed, so the stream continues exactly where it stopped — given the same world size, micro-batch size and
shards. Streaming data (``data.preprocess_ahead: false``) keeps Ray Data's dynamic split: a resumed stage there
re-reads its epoch from the start in a new order (logged as a warning).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deco_core.data.ray_data import collate
from deco_core.data.transforms import ImageTransform

log = logging.getLogger(__name__)


def derived_seed(*parts: int | str) -> int:
    """A 31-bit seed from its parts, identical in every process (unlike ``hash``)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def split_for_workers(ds, world: int) -> list:
    """A materialized dataset -> ``world`` equal shards (the remainder dropped), in a fixed row order."""
    shards = ds.split(world, equal=True)
    return [s.materialize() for s in shards]


class SampleStream:
    """Micro-batches of one worker for a given epoch; ``exact`` when the shard is a fixed dataset."""

    def __init__(self, shard: Any, *, exact: bool, seed: int, rank: int, micro_batch: int, shuffle_buffer: int,
                 collate_fn: Any, length_groups: int = 0) -> None:
        self.shard, self.exact, self.seed, self.rank = shard, exact, seed, rank
        self.micro_batch, self.shuffle_buffer, self.collate_fn = micro_batch, shuffle_buffer, collate_fn
        self.length_groups = length_groups
        self._primed: tuple[int, Iterator[dict], threading.Thread, dict[str, Any]] | None = None

    def rows(self) -> int:
        return self.shard.count() if self.exact else 0

    def prime(self, epoch: int) -> None:
        """Start reading ``epoch`` from its start in a background thread, so Ray Data's start-up (executor,
        block reads, the first shuffle window and collate) overlaps whatever the caller does next (engine
        initialisation); the next ``epoch(epoch, 0)`` continues from the batch it fetched."""
        batches = self._batches(epoch, 0)
        primed: dict[str, Any] = {}

        def fetch() -> None:
            try:
                primed["first"] = next(batches, None)
            except BaseException as exc:  # re-raised in the training thread by epoch()
                primed["error"] = exc

        thread = threading.Thread(target=fetch, name=f"prime-epoch-{epoch}", daemon=True)
        thread.start()
        self._primed = (epoch, batches, thread, primed)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict]:
        """The epoch's micro-batches after the first ``skip`` (a resumed epoch)."""
        primed, self._primed = self._primed, None
        if primed is not None and primed[0] == epoch and skip == 0:
            _, batches, thread, got = primed
            thread.join()
            if "error" in got:
                raise got["error"]
            if got["first"] is None:
                return
            yield got["first"]
            yield from batches
            return
        yield from self._batches(epoch, skip)

    def _batches(self, epoch: int, skip: int) -> Iterator[dict]:
        seed = derived_seed(self.seed, epoch, self.rank)
        source = self.shard
        if self.exact:
            from ray.data import RandomSeedConfig

            source = self.shard.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=False))
        elif skip:
            log.warning("streaming data (data.preprocess_ahead=false) cannot replay its order: the resumed epoch %d "
                        "is read again from its start in a new order", epoch)
            skip = 0
        if self.length_groups:
            windows = source.iter_batches(batch_size=self.micro_batch * self.length_groups, batch_format="numpy",
                                          local_shuffle_buffer_size=self.shuffle_buffer or None,
                                          local_shuffle_seed=seed, prefetch_batches=1)
            batches = (self.collate_fn(b) for b in length_grouped(windows, self.micro_batch, seed))
        else:
            batches = iter(source.iter_torch_batches(batch_size=self.micro_batch, collate_fn=self.collate_fn,
                                                     drop_last=True, prefetch_batches=2,
                                                     local_shuffle_buffer_size=self.shuffle_buffer or None,
                                                     local_shuffle_seed=seed))
        for _ in range(skip):
            if next(batches, None) is None:
                return
        yield from batches


def length_grouped(windows: Iterator[dict[str, np.ndarray]], micro_batch: int, seed: int) -> Iterator[dict]:
    """Micro-batches of similar length (LLaVA's ``group_by_length``): each window of samples (already in the
    epoch's shuffled order) is sorted by token count and cut into micro-batches, which are then yielded in a
    seeded random order, so a batch pads to the length of its own samples rather than to the longest of a random
    draw. A window's remainder below one micro-batch is dropped, as ``drop_last`` does. Deterministic in
    (``seed``, window index), so a resumed epoch replays the same micro-batches."""
    for w, window in enumerate(windows):
        n = len(window["attention_mask"]) // micro_batch * micro_batch
        if n == 0:
            continue
        lengths = window["attention_mask"][:n].sum(axis=1)
        groups = np.argsort(lengths, kind="stable").reshape(-1, micro_batch)  # [n / micro, micro] row indices
        for g in np.random.default_rng(derived_seed(seed, "length-groups", w)).permutation(len(groups)):
            yield {k: v[groups[g]] for k, v in window.items()}


def collate_fn(transform: ImageTransform, keep_keys: bool = False):
    """``ray_data.collate`` as the callable class Ray Data expects (a plain function is deprecated there);
    ``keep_keys`` adds the batch's sample keys (numpy) for the sample ledger."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict) -> dict:
            out = collate(batch, transform)
            if keep_keys and "key" in batch:
                out["keys"] = batch["key"]
            return out

    return Collate()


class SampleLedger:
    """Optional record of the sample keys of every micro-batch (one JSON line each), for audits and tests."""

    def __init__(self, path: str | None, rank: int) -> None:
        self.path = Path(f"{path}.rank{rank}.jsonl") if path else None
        self.rank = rank
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, step: int, epoch: int, micro: int, keys: Any) -> None:
        if self.path is None or keys is None:
            return
        line = {"rank": self.rank, "step": step, "epoch": epoch, "micro": micro, "keys": [str(k) for k in keys]}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def read_ledger(path: str, world: int) -> dict[tuple[int, int, int], list[str]]:
    """{(rank, step, micro): keys} as the run finally saw it: a replayed micro-batch replaces the earlier one."""
    out: dict[tuple[int, int, int], list[str]] = {}
    for rank in range(world):
        for line in Path(f"{path}.rank{rank}.jsonl").read_text().splitlines():
            d = json.loads(line)
            out[(d["rank"], d["step"], d["micro"])] = d["keys"]
    return out
