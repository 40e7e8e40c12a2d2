"""The ShapesWorld training corpus as written to shards: benchmark formats mixed sample by sample, the format
mixture honoured exactly, and bad mixtures rejected naming the setting."""

from __future__ import annotations

from collections import Counter

import pytest

from deco_core.config import compose
from deco_core.data.corpus import build_shapes_corpus, format_counts
from deco_core.data.shards import iter_samples, read_manifest


def test_every_format_shard_holds_every_task_in_its_share(tmp_path):
    """Format samples are interleaved before sharding: each shard holds all four tasks, in the configured mix."""
    cfg = compose("pipeline/tiny", [f"data.root={tmp_path}", "data.caption_samples=8", "data.instruct_samples=8",
                                    "data.format_samples=400", "data.samples_per_shard=100", "data.eval_samples=8",
                                    "data.format_mix={rec: 2.0, vqa: 1.0, pope: 0.5, mc: 0.5}"])
    uris = build_shapes_corpus(cfg.data, progress=False)
    totals: Counter = Counter()
    for url in read_manifest(uris.finetune_formats).shard_urls:
        tasks = Counter(s["json"]["task"] for s in iter_samples(url))
        assert set(tasks) == {"rec", "vqa", "pope", "mc"}, f"{url}: {dict(tasks)}"
        totals.update(tasks)
    assert dict(totals) == {"rec": 200, "vqa": 100, "pope": 50, "mc": 50}


def test_format_counts_sum_to_n_and_reject_bad_mixtures():
    """Counts follow the weights and always add up to n; unknown streams or all-zero weights are refused."""
    assert sum(format_counts(1001, {"rec": 1, "vqa": 1, "pope": 1}).values()) == 1001
    assert format_counts(10, {"rec": 1.0, "mc": 0.0}) == {"rec": 10, "mc": 0}
    for bad in ({"caption": 1.0}, {"rec": 0.0}, {"rec": -1.0, "mc": 2.0}):
        with pytest.raises(ValueError, match="data.format_mix"):
            format_counts(10, bad)
