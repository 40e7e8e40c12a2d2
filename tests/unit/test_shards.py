"""Unit tests for WebDataset shard writing/reading, the manifest, and storage helpers (local disk)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from deco_core.data.shards import (
    MANIFEST_NAME,
    ChecksumMismatchError,
    ShardError,
    iter_samples,
    read_manifest,
    verify_manifest,
    write_shards,
)
from deco_core.data.storage import (
    StorageConfig,
    StorageError,
    get_filesystem,
    join_uri,
    redact,
    with_retries,
)


def make_samples(n: int, *, start: int = 0) -> list[dict]:
    """n small samples; every third is text-only, the others carry fake PNG bytes."""
    out = []
    for i in range(start, start + n):
        sample = {
            "__key__": f"s{i:05d}",
            "json": {"id": f"s{i:05d}", "task": "caption", "meta": {"i": i, "name": "ünïcode"},
                     "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                       {"from": "gpt", "value": f"shape {i}"}]},
        }
        if i % 3:
            sample["png"] = b"\x89PNG\r\n\x1a\n" + bytes([i % 256]) * (10 + i)
        out.append(sample)
    return out


def write(samples, out: Path, **kw):
    kw.setdefault("samples_per_shard", 10)
    return write_shards(samples, str(out), source="shapes", split="train", progress=False, **kw)


def test_same_samples_give_byte_identical_shards(tmp_path: Path) -> None:
    """Writing the same samples twice gives byte-identical tar files and identical manifest rows."""
    a = write(make_samples(25), tmp_path / "a")
    b = write(make_samples(25), tmp_path / "b")
    assert a.rows == b.rows
    for ua, ub in zip(a.shard_urls, b.shard_urls, strict=True):
        assert Path(ua).read_bytes() == Path(ub).read_bytes()


def test_manifest_counts_and_checksums(tmp_path: Path) -> None:
    """Manifest rows hold the right sample counts, sizes and sha256, and are read back identically."""
    written = write(make_samples(25), tmp_path)
    assert [r.samples for r in written.rows] == [10, 10, 5]
    assert [r.url for r in written.rows] == [f"shard-{i:06d}.tar" for i in range(3)]
    for row, url in zip(written.rows, written.shard_urls, strict=True):
        data = Path(url).read_bytes()
        assert os.path.isabs(url)
        assert row.bytes == len(data)
        assert row.sha256 == hashlib.sha256(data).hexdigest()
        assert (row.source, row.split) == ("shapes", "train")
    read = read_manifest(str(tmp_path))
    assert read.rows == written.rows and read.total_samples == 25
    assert read_manifest(str(tmp_path / MANIFEST_NAME)).rows == written.rows
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_NAME] + [r.url for r in written.rows]


def test_roundtrip_equals_original_samples(tmp_path: Path) -> None:
    """iter_samples returns exactly the written samples: keys, json dicts and image bytes, in order."""
    samples = make_samples(23)
    write(samples, tmp_path, prefix="train")
    assert list(iter_samples(str(tmp_path))) == samples
    assert list(iter_samples(f"file://{tmp_path}/train-000001.tar")) == samples[10:20]


def test_members_of_a_sample_are_together_and_sorted(tmp_path: Path) -> None:
    """Each sample's members are contiguous in the tar and sorted by extension."""
    sample = make_samples(2)[1]
    sample["txt"] = "a caption"
    manifest = write([sample], tmp_path)
    with tarfile.open(manifest.shard_urls[0]) as tar:
        assert tar.getnames() == ["s00001.json", "s00001.png", "s00001.txt"]
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())


def test_crash_mid_write_leaves_no_manifest_and_no_partial_shard(tmp_path: Path) -> None:
    """A source failing after 1.5 shards leaves no manifest, no half shard and no temp files."""
    write(make_samples(30), tmp_path)  # an older complete dataset in the same folder

    def failing():
        yield from make_samples(15)
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write(failing(), tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()  # the stale manifest was removed before writing
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]
    with pytest.raises(FileNotFoundError, match="did not finish"):
        read_manifest(str(tmp_path))


def test_crash_in_fresh_folder_publishes_only_complete_shards(tmp_path: Path) -> None:
    """After a crash the only visible tar is the first, fully written shard."""

    def failing():
        yield from make_samples(15)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write(failing(), tmp_path)
    assert os.listdir(tmp_path) == ["shard-000000.tar"]
    assert [s["__key__"] for s in iter_samples(str(tmp_path / "shard-000000.tar"))] == [
        f"s{i:05d}" for i in range(10)]


def test_duplicate_key_is_rejected_naming_it(tmp_path: Path) -> None:
    """A key repeated within one run raises an error that names the key."""
    samples = make_samples(5) + make_samples(1, start=2)
    with pytest.raises(ShardError, match="duplicate sample key 's00002'"):
        write(samples, tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(__key__="../up"), "not filesystem-safe"),
        (lambda s: s.update(__key__="a/b"), "not filesystem-safe"),
        (lambda s: s.update(__key__="a.b"), "not filesystem-safe"),
        (lambda s: s.update(json={"id": "x"}), "'conversations' list"),
        (lambda s: s.update(json="not a dict"), "'conversations' list"),
        (lambda s: s.update(png=[1, 2]), "field 'png' is a list"),
    ],
)
def test_invalid_samples_are_rejected(tmp_path: Path, mutate, message: str) -> None:
    """Unsafe keys, json without a conversations list and non-bytes images raise a clear ShardError."""
    sample = make_samples(2)[1]
    mutate(sample)
    with pytest.raises(ShardError, match=message):
        write([sample], tmp_path)


def _tar_with(path: Path, names: list[str]) -> None:
    with tarfile.open(path, "w") as tar:
        for name in names:
            payload = json.dumps({"conversations": []}).encode()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize("bad", ["../evil.json", "/etc/evil.json", "a/../../evil.json"])
def test_iter_samples_rejects_unsafe_member_paths(tmp_path: Path, bad: str) -> None:
    """A tar member with an absolute path or '..' is rejected with an error naming it."""
    shard = tmp_path / "bad.tar"
    _tar_with(shard, ["ok.json", bad])
    with pytest.raises(ShardError, match="unsafe member path"):
        list(iter_samples(str(shard)))


def test_iter_samples_rejects_split_samples(tmp_path: Path) -> None:
    """A sample whose members are not contiguous is reported as a malformed shard."""
    shard = tmp_path / "split.tar"
    _tar_with(shard, ["a.json", "b.json", "a.txt"])
    with pytest.raises(ShardError, match="'a' are not contiguous"):
        list(iter_samples(str(shard)))


def test_verify_manifest_detects_flipped_byte(tmp_path: Path) -> None:
    """verify_manifest passes on intact shards and names the shard whose byte was flipped."""
    manifest = write(make_samples(25), tmp_path)
    assert verify_manifest(str(tmp_path)).total_samples == 25
    target = Path(manifest.shard_urls[1])
    data = bytearray(target.read_bytes())
    data[700] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="shard-000001.tar"):
        verify_manifest(str(tmp_path))


def test_progress_bar_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a progress bar and a relative output path the result is the same, with absolute shard URLs."""
    monkeypatch.chdir(tmp_path)
    manifest = write_shards(make_samples(12), "rel", source="shapes", split="train", samples_per_shard=5,
                            progress=True)
    assert manifest.shard_urls[0] == str(tmp_path / "rel" / "shard-000000.tar")
    assert read_manifest("rel").shard_urls == manifest.shard_urls
    assert list(iter_samples("rel")) == make_samples(12)


def test_empty_input_writes_empty_manifest(tmp_path: Path) -> None:
    """No samples give an empty but valid manifest."""
    assert write([], tmp_path).rows == []
    assert read_manifest(str(tmp_path)).total_samples == 0


def test_redact_removes_secrets_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """redact replaces secret env values and URL passwords, and leaves ordinary values alone."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-K7MDENG")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123456")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    text = "key=wJalrXUtnFEMI-K7MDENG token tok-123456 url=https://bob:hunter22@host/x flag=false"
    out = redact(text)
    assert "wJalrXUtnFEMI-K7MDENG" not in out and "tok-123456" not in out and "hunter22" not in out
    assert "flag=false" in out and "https://bob:***@host/x" in out


def test_with_retries_retries_connection_errors_only() -> None:
    """Connection errors are retried then succeed; other errors propagate at once; exhaustion -> StorageError."""
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("refused")
        return "ok"

    cfg = StorageConfig(retries=3, backoff_s=0.0, endpoint_url="http://127.0.0.1:1")
    assert with_retries(flaky, "op", cfg) == "ok" and len(calls) == 3

    def missing():
        calls.append(1)
        raise FileNotFoundError("nope")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        with_retries(missing, "op", cfg)
    assert len(calls) == 1
    with pytest.raises(StorageError, match=r"http://127\.0\.0\.1:1.*s3://b/k"):
        with_retries(lambda: (_ for _ in ()).throw(ConnectionError("x")), "op", cfg, uri="s3://b/k")


def test_uri_helpers(tmp_path: Path) -> None:
    """join_uri keeps schemes, and get_filesystem maps local paths and file:// to the local filesystem."""
    assert join_uri("s3://bucket/pre/", "a/", "b.tar") == "s3://bucket/pre/a/b.tar"
    assert join_uri(str(tmp_path), "x.tar") == str(tmp_path / "x.tar")
    fs, path = get_filesystem(f"file://{tmp_path}")
    assert path == str(tmp_path) and fs.isdir(path)
    with pytest.raises(ValueError, match="unsupported URI scheme 'gopher'"):
        get_filesystem("gopher://x/y")


def test_corpus_progress_bars_know_their_totals(tmp_path, monkeypatch):
    """Every split's shard bar gets the known sample count as its total (not "n/?") and reaches it."""
    import contextlib

    import deco_core.data.shards as shards
    from deco_core.config import compose
    from deco_core.data.corpus import build_shapes_corpus

    seen: dict[str, list[int | None]] = {}

    @contextlib.contextmanager
    def recording(enabled, total, label):
        seen[label] = [total, 0]
        yield lambda n=1: seen[label].__setitem__(1, seen[label][1] + n)

    monkeypatch.setattr(shards, "_progress", recording)
    data = compose("pipeline/tiny", ["data.caption_samples=24", "data.instruct_samples=16", "data.format_samples=8",
                                     "data.eval_samples=64"]).data
    build_shapes_corpus(data, root=str(tmp_path))
    assert len(seen) == 5 and all(total is not None and total == done for total, done in seen.values()), seen
