"""Shards on a real local S3 endpoint (moto server): write via s3fs, read back plainly and with Ray Data."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator

import pytest

from deco_core.data.shards import MANIFEST_NAME, iter_samples, read_manifest, verify_manifest, write_shards
from deco_core.data.storage import StorageConfig, StorageError, get_filesystem, pyarrow_filesystem
from tests.fixtures.s3 import S3_TEST_ENV
from tests.unit.test_shards import make_samples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_local(s3_server) -> Iterator[None]:
    """A local Ray (2 CPUs, no dashboard), reused if one is already running; shut down if we started it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024**2,
                 log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def write_to(uri: str, storage: StorageConfig, n: int = 25):
    return write_shards(make_samples(n), uri, source="shapes", split="train", samples_per_shard=10,
                        storage=storage, progress=False)


def test_s3_roundtrip_with_plain_reader(s3_server, s3_bucket: str) -> None:
    """Shards written to S3 through s3fs verify against the manifest and read back equal to the originals."""
    uri = f"{s3_bucket}/shapes/train"
    written = write_to(uri, s3_server.storage)
    assert written.shard_urls[0] == f"{uri}/shard-000000.tar"
    fs, root = get_filesystem(uri, s3_server.storage)
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(root)) == [MANIFEST_NAME] + [r.url for r in written.rows]
    assert read_manifest(uri, s3_server.storage).rows == written.rows
    assert verify_manifest(uri, s3_server.storage).total_samples == 25
    assert list(iter_samples(uri, s3_server.storage)) == make_samples(25)


def test_s3_crash_mid_write_leaves_only_complete_shards(s3_server, s3_bucket: str) -> None:
    """A source failing after 1.5 shards leaves one complete shard object on S3 and no manifest."""

    def failing():
        yield from make_samples(15)
        raise RuntimeError("source broke")

    uri = f"{s3_bucket}/crash"
    with pytest.raises(RuntimeError, match="source broke"):
        write_shards(failing(), uri, source="shapes", split="train", samples_per_shard=10,
                     storage=s3_server.storage, progress=False)
    fs, root = get_filesystem(uri, s3_server.storage)
    fs.invalidate_cache()
    assert [p.rsplit("/", 1)[1] for p in fs.find(root)] == ["shard-000000.tar"]
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_manifest(uri, s3_server.storage)


def test_ray_read_webdataset_from_s3(s3_server, s3_bucket: str, ray_local) -> None:
    """Ray Data reads the S3 shards (pyarrow filesystem, raw bytes) into the original samples."""
    import ray

    uri = f"{s3_bucket}/ray"
    manifest = write_to(uri, s3_server.storage, n=23)
    ds = ray.data.read_webdataset(
        manifest.shard_urls, filesystem=pyarrow_filesystem(uri, s3_server.storage), decoder=None,
        # Credentials reach the read tasks through their env even if Ray started before the S3 fixture.
        runtime_env={"env_vars": dict(S3_TEST_ENV)},
    )
    rows = sorted(ds.take_all(), key=lambda r: r["__key__"])
    expected = make_samples(23)
    assert len(rows) == manifest.total_samples == len(expected)
    for got, want in zip(rows, expected, strict=True):
        assert got["__key__"] == want["__key__"]
        assert json.loads(got["json"]) == want["json"]
        # Ray fills a member absent from some samples (text-only here) with NaN, not None.
        png = got.get("png")
        assert (png if isinstance(png, bytes) else None) == want.get("png")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_fails_fast_without_leaking_the_secret(s3_server) -> None:
    """Writing to a closed local port raises StorageError naming the endpoint within ~10 s, secret redacted."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    storage = StorageConfig(endpoint_url=endpoint, retries=3, backoff_s=0.2, connect_timeout_s=1.0)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        write_to("s3://nowhere/data", storage, n=3)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert endpoint in message and "s3://nowhere/data" in message and secret not in message
