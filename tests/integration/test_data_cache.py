"""Preprocessed data shared between stages inside ``hold_preprocessed()``: a stage with the same data key takes the
earlier stage's shards without preprocessing again and its stage monitor gets the same sample counts; the key
follows the manifests, the spec and the row plan; nothing is kept outside the block."""

from __future__ import annotations

import pytest

from deco_core.config import compose
from deco_core.data.shards import write_shards
from deco_core.model.tokenizer import load_tokenizer
from deco_core.monitor import get_monitor
from deco_core.train import data_cache
from deco_core.train.data_cache import Preprocessed, data_key, hold_preprocessed, keep, lookup
from deco_core.train.progress import PhaseClock
from deco_core.train.trainer import _materialize, preprocess_spec


@pytest.fixture(scope="module")
def tiny():
    return compose("pipeline/tiny", ["pretrain.max_steps=3", "pretrain.num_workers=2", "data.max_bad_fraction=0.05"])


def _count_rows(board):
    """A Ray Data map that counts what it sees on ``board``, as preprocessing does."""
    def fn(batch):
        board.add.remote({"seen": len(batch["id"]), "bad_image": 1})
        return batch
    return fn


def test_a_matching_stage_reuses_the_shards_and_replays_the_counts(ray_local, tiny):
    first, second = get_monitor("cache-first"), get_monitor("cache-second")
    ds = ray_local.data.range(120, override_num_blocks=4).map_batches(_count_rows(first), batch_size=None)

    def poisoned(batch):
        raise AssertionError("the second stage must not preprocess again")

    again = ray_local.data.range(120).map_batches(poisoned)
    with hold_preprocessed():
        a = _materialize(ds, first, tiny, tiny.pretrain, PhaseClock(), key="k1")
        b = _materialize(again, second, tiny, tiny.pretrain, PhaseClock(), key="k1")
    assert b.shards is a.shards and (b.rows, b.total_steps) == (a.rows, a.total_steps) == (120, 3)
    counts = ray_local.get(first.snapshot.remote())
    assert counts == ray_local.get(second.snapshot.remote()) == {"seen": 120, "bad_image": 4}
    assert lookup("k1") is None  # dropped when the block ends


def test_nothing_is_kept_outside_the_block_and_the_oldest_entry_goes_first():
    entry = Preprocessed([], 0, {})
    keep("outside", entry)
    assert lookup("outside") is None and not data_cache.holding()
    with hold_preprocessed(capacity=2):
        for key in ("a", "b", "c"):
            keep(key, entry)
        assert lookup("a") is None and lookup("b") is entry and lookup("c") is entry
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        with hold_preprocessed(capacity=0):
            pass


def test_the_key_follows_the_manifests_the_spec_and_the_plan(tiny, tmp_path):
    tokenizer = load_tokenizer(tiny.model.tokenizer)
    spec = preprocess_spec(tiny, "plain", tokenizer)
    record = {"__key__": "s0", "json": {"id": "s0", "conversations": [{"from": "human", "value": "hi"},
                                                                     {"from": "gpt", "value": "yes"}]}}

    def write(records):
        write_shards(records, str(tmp_path / "a"), source="shapes", split="train", progress=False)

    write([record])
    plan = {"samples": None, "workers": 2, "batch": 64}
    key = data_key([(str(tmp_path / "a"), 1.0)], spec, tiny.data.storage, plan)
    assert key == data_key([(str(tmp_path / "a"), 1.0)], spec, tiny.data.storage, dict(plan))
    write([record, {**record, "__key__": "s1"}])  # the folder rewritten: its manifest changes
    changed = {
        "manifest": data_key([(str(tmp_path / "a"), 1.0)], spec, tiny.data.storage, plan),
        "weight": data_key([(str(tmp_path / "a"), 2.0)], spec, tiny.data.storage, plan),
        "tokens": data_key([(str(tmp_path / "a"), 1.0)], preprocess_spec(
            compose("pipeline/tiny", ["model.projector.num_tokens=16"]), "plain", tokenizer),
            tiny.data.storage, plan),
        "workers": data_key([(str(tmp_path / "a"), 1.0)], spec, tiny.data.storage, {**plan, "workers": 1}),
    }
    assert key not in changed.values() and len(set(changed.values())) == len(changed)
