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


def test_s3_shards_are_matched_to_their_manifest_rows(ray_local, s3_server, s3_bucket):
    """On S3 the read tasks find each shard's manifest count by its URL: an intact set gives every sample and no
    counts; a manifest row claiming 2 more samples than its shard holds counts 2 'truncated_shard'."""
    from deco_core.data.ray_shards import ShardDatasource
    from deco_core.data.storage import pyarrow_filesystem
    from tests.fixtures.s3 import S3_TEST_ENV
    from tests.unit.test_shards import make_samples

    uri = f"{s3_bucket}/ray-shards"
    manifest = write_shards(make_samples(25), uri, source="shapes", split="train", samples_per_shard=10,
                            storage=s3_server.storage, progress=False)
    fs = pyarrow_filesystem(uri, s3_server.storage)
    for name, claimed in (("s3-intact-test", 0), ("s3-short-test", 2)):
        counter = get_quality_counter(name)
        expected = {row.url: row.samples + (claimed if row.url.endswith("000001.tar") else 0) for row in manifest.rows}
        source = ShardDatasource(manifest.shard_urls, expected=expected, counter_name=name, filesystem=fs)
        rows = ray.data.read_datasource(source, runtime_env={"env_vars": dict(S3_TEST_ENV)}).take_all()
        assert sorted(r["__key__"] for r in rows) == [s["__key__"] for s in make_samples(25)]
        counts = ray.get(counter.snapshot.remote())
        assert counts == ({"seen": 2, "truncated_shard": 2} if claimed else {})
