"""Bad tar content on the Ray Data path (deco_core/data/ray_shards.py): members with '..' or absolute names and a
truncated tar whose manifest was rewritten to match never reach a batch nor crash the read; each is counted in the
stage monitor under its reason, and the bad fraction check names it."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from deco_core.config import compose
from deco_core.data.ray_data import DataQualityError, build_dataset, check_quality, get_quality_counter
from deco_core.data.shapes import instruct_samples
from deco_core.data.shards import read_manifest, write_shards
from deco_core.data.storage import StorageConfig
from deco_core.train.trainer import preprocess_spec
from tests.fixtures.bad_shards import append_members, cut_inside_a_member, rewrite_manifest

pytestmark = pytest.mark.integration


def _dataset(tmp_path: Path, n: int = 40) -> tuple[str, list[str]]:
    uri = str(tmp_path / "shards")
    samples = list(instruct_samples(n, seed=11))
    write_shards(samples, uri, source="shapes-instruct", split="train", samples_per_shard=10, progress=False)
    return uri, [s["__key__"] for s in samples]


def _read(uri: str, tokenizer, name: str, tasks: bool = False) -> tuple[list[str], dict[str, int]]:
    spec = preprocess_spec(compose("pipeline/tiny"), "vicuna_v1", tokenizer)
    counter = get_quality_counter(name)
    ds, _ = build_dataset([(uri, 1.0)], spec, StorageConfig(), name, batch_size=8, tasks=tasks)
    keys = [str(r["key"]) for r in (ds.materialize() if tasks else ds).iter_rows()]
    return keys, ray.get(counter.snapshot.remote())


def test_unsafe_member_paths_are_dropped_and_counted(ray_local, tmp_path, shapes_tokenizer):
    """Keys '../escape' and '/abs/escape' added to a shard (manifest rewritten to match) do not reach the batches:
    exactly the manifest's 40 samples come out, and the monitor counts 2 'unsafe_path' of 42 seen."""
    uri, keys = _dataset(tmp_path)
    shard = Path(read_manifest(uri).shard_urls[2])
    append_members(shard, ["../escape.json", "/abs/escape.json"])
    rewrite_manifest(Path(uri))
    got, counts = _read(uri, shapes_tokenizer, "unsafe-paths-test")
    assert sorted(got) == sorted(keys)
    assert counts == {"seen": 42, "unsafe_path": 2}


def test_truncated_shard_is_counted_and_the_read_goes_on(ray_local, tmp_path, shapes_tokenizer):
    """A shard cut inside a member, with its manifest row rewritten to the cut size and checksum, is counted as
    'truncated_shard' (the samples lost); the other shards' samples all come out, preprocessed ahead (tasks) as
    the training stage does, and a bad fraction above the limit fails naming the reason."""
    uri, keys = _dataset(tmp_path)
    shard = Path(read_manifest(uri).shard_urls[1])
    cut_inside_a_member(shard)
    rewrite_manifest(Path(uri))
    got, counts = _read(uri, shapes_tokenizer, "truncated-shard-test", tasks=True)
    assert set(keys[:10] + keys[20:]) <= set(got) < set(keys)
    assert counts["seen"] == 40 and counts["truncated_shard"] == 40 - len(got) > 0
    assert set(counts) == {"seen", "truncated_shard"}
    with pytest.raises(DataQualityError, match="truncated_shard"):
        check_quality(counts, max_bad_fraction=0.01, min_seen=10)
