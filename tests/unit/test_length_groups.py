"""Length-grouped micro-batches (``train.group_by_length``): every sample of a window trained once, batches of
similar length, a seeded order that a resumed epoch replays, and less padding than random batches."""

from __future__ import annotations

import numpy as np
import pytest

from deco_core.config import ConfigError, compose
from deco_core.train.stream import length_grouped


def _windows(lengths: list[int], window: int, max_len: int = 64) -> list[dict[str, np.ndarray]]:
    mask = np.zeros((len(lengths), max_len), np.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    keys = np.array([f"s{i}" for i in range(len(lengths))])
    return [{"attention_mask": mask[i:i + window], "key": keys[i:i + window]} for i in range(0, len(lengths), window)]


def test_each_window_is_cut_into_micro_batches_of_neighbouring_lengths():
    lengths = list(np.random.default_rng(0).integers(5, 60, size=64))
    batches = list(length_grouped(iter(_windows(lengths, 32)), micro_batch=8, seed=0))
    assert len(batches) == 8 and all(len(b["key"]) == 8 for b in batches)
    assert sorted(k for b in batches for k in b["key"]) == sorted(f"s{i}" for i in range(64))  # each sample once
    for w in range(2):  # within a window, batches partition the sorted lengths: no two batches interleave
        window = [b for b in batches if int(b["key"][0][1:]) // 32 == w]
        spans = sorted((b["attention_mask"].sum(1).min(), b["attention_mask"].sum(1).max()) for b in window)
        assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:], strict=False))


def test_the_order_is_seeded_and_replays_exactly():
    lengths = list(np.random.default_rng(1).integers(5, 60, size=96))
    run = [list(b["key"]) for b in length_grouped(iter(_windows(lengths, 48)), 8, seed=3)]
    again = [list(b["key"]) for b in length_grouped(iter(_windows(lengths, 48)), 8, seed=3)]
    other = [list(b["key"]) for b in length_grouped(iter(_windows(lengths, 48)), 8, seed=4)]
    assert run == again and run != other


def test_a_window_remainder_below_one_micro_batch_is_dropped():
    batches = list(length_grouped(iter(_windows([10] * 20, 20)), micro_batch=8, seed=0))
    assert [len(b["key"]) for b in batches] == [8, 8]


def test_grouped_batches_pad_less_than_random_batches():
    rng = np.random.default_rng(2)
    lengths = list(np.concatenate([rng.integers(40, 66, 400), rng.integers(70, 148, 80)]))
    rng.shuffle(lengths)
    grouped = [b["attention_mask"].sum(1).max() for b in length_grouped(iter(_windows(lengths, 128, 160)), 32, 0)]
    plain = [np.max(lengths[i:i + 32]) for i in range(0, 384, 32)]
    assert np.mean(grouped) < 0.8 * np.mean(plain)


def test_group_by_length_must_not_be_negative():
    with pytest.raises(ConfigError, match="finetune.group_by_length"):
        compose("pipeline/tiny", ["finetune.group_by_length=-1"])
