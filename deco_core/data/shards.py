"""WebDataset shards and their manifest on local disk or S3: writing, reading back, verifying.

A dataset is a folder (or S3 prefix) of `{prefix}-{NNNNNN}.tar` shards plus `manifest.parquet`
(one row per shard: url, samples, bytes, sha256, source, split), which is written last: a dataset
without a manifest is incomplete. Samples: {"__key__": str, "json": dict with "conversations", "png"/"jpg": bytes}.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from deco_core.data.shard_format import (
    ShardError,
    add_tar_member,
    check_member_name,
    decode_member,
    encode_sample,
    validate_sample,
)
from deco_core.data.storage import StorageConfig, get_filesystem, is_remote, join_uri, with_retries
from deco_core.data.tar_rules import BadSample, HashingReader, read_shard_records

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"
MANIFEST_SCHEMA = pa.schema(
    [("url", pa.string()), ("samples", pa.int64()), ("bytes", pa.int64()), ("sha256", pa.string()),
     ("source", pa.string()), ("split", pa.string())]
)
_HASH_CHUNK = 1 << 20

__all__ = [
    "MANIFEST_NAME", "ChecksumMismatchError", "Manifest", "ShardError", "ShardRow",
    "iter_samples", "read_manifest", "verify_manifest", "write_shards",
]

class ChecksumMismatchError(ShardError):
    """A shard's bytes or sha256 differ from its manifest row."""


@dataclass(frozen=True)
class ShardRow:
    """One manifest row: a shard's name relative to the dataset folder and its integrity data."""

    url: str
    samples: int
    bytes: int
    sha256: str
    source: str
    split: str


@dataclass
class Manifest:
    """The shards of one dataset folder; `base_uri` is the folder holding them and manifest.parquet."""

    base_uri: str
    rows: list[ShardRow] = field(default_factory=list)

    @property
    def total_samples(self) -> int:
        return sum(r.samples for r in self.rows)

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def shard_urls(self) -> list[str]:
        """Absolute shard URIs (local paths or s3://...), in manifest order."""
        return [join_uri(self.base_uri, r.url) for r in self.rows]

    @property
    def uri(self) -> str:
        return join_uri(self.base_uri, MANIFEST_NAME)


# ----------------------------------------------------------------------------------------------- writing


@contextmanager
def _progress(enabled: bool, total: int | None, label: str) -> Iterator:
    """Yield `advance(n)`: a rich progress bar when enabled, else a no-op (shards are logged anyway)."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


class _Publisher:
    """Moves finished local temp files to their final name, atomically.

    Local: the temp file sits beside its target and `os.replace` renames it. S3: the file is uploaded
    with one `put_file`; an S3 object (single PUT or multipart upload) only becomes visible once the
    upload completes, so a reader never sees a half-written shard and no `.tmp/` key is needed.
    """

    def __init__(self, out_uri: str, storage: StorageConfig) -> None:
        self.out_uri, self.storage = out_uri, storage
        self.fs, self.root = get_filesystem(out_uri, storage)
        self.remote = is_remote(out_uri)
        if self.remote:
            self.tmp_dir = tempfile.mkdtemp(prefix="deco-shards-")
        else:
            os.makedirs(self.root, exist_ok=True)
            self.tmp_dir = self.root

    def temp_path(self, name: str) -> str:
        return os.path.join(self.tmp_dir, f".{name}.tmp-{os.getpid()}")

    def publish(self, tmp: str, name: str) -> None:
        if not self.remote:
            os.replace(tmp, os.path.join(self.root, name))
            return
        target = f"{self.root}/{name}"
        with_retries(lambda: self.fs.put_file(tmp, target), f"upload {name}", self.storage,
                     uri=join_uri(self.out_uri, name))
        os.remove(tmp)

    def remove_stale_manifest(self) -> None:
        """Delete an old manifest first, so a crash can never leave it describing new shards."""
        path = f"{self.root}/{MANIFEST_NAME}" if self.remote else os.path.join(self.root, MANIFEST_NAME)
        uri = join_uri(self.out_uri, MANIFEST_NAME)
        if with_retries(lambda: self.fs.exists(path), "check for an old manifest", self.storage, uri=uri):
            log.warning("removing the old manifest %s before writing new shards", uri)
            with_retries(lambda: self.fs.rm_file(path), "remove the old manifest", self.storage, uri=uri)

    def close(self) -> None:
        if self.remote:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_tar(path: str, samples: list[dict]) -> None:
    """Write samples to a deterministic tar (GNU format, fixed mtime/owner/mode, members sorted)."""
    with tarfile.open(path, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for sample in samples:
            for name, payload in encode_sample(sample):
                add_tar_member(tar, name, payload)


def _flush_shard(pub: _Publisher, name: str, batch: list[dict], source: str, split: str) -> ShardRow:
    tmp = pub.temp_path(name)
    try:
        _write_tar(tmp, batch)
        row = ShardRow(url=name, samples=len(batch), bytes=os.path.getsize(tmp), sha256=_sha256_file(tmp),
                       source=source, split=split)
        pub.publish(tmp, name)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log.debug("wrote shard %s (%d samples, %d bytes)", join_uri(pub.out_uri, name), row.samples, row.bytes)
    return row


def _write_manifest_file(pub: _Publisher, rows: list[ShardRow]) -> None:
    table = pa.Table.from_pylist([r.__dict__ for r in rows], schema=MANIFEST_SCHEMA)
    tmp = pub.temp_path(MANIFEST_NAME)
    try:
        pq.write_table(table, tmp)
        pub.publish(tmp, MANIFEST_NAME)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_shards(
    samples: Iterable[dict],
    out_uri: str,
    *,
    source: str,
    split: str,
    samples_per_shard: int = 1000,
    prefix: str = "shard",
    storage: StorageConfig | None = None,
    progress: bool = True,
    total: int | None = None,
) -> Manifest:
    """Write samples as WebDataset shards `{prefix}-{NNNNNN}.tar` under `out_uri`, then manifest.parquet.

    Same samples in the same order give byte-identical shards. Keys must be filesystem-safe and unique
    in the run. On any error the partial shard is deleted and no manifest is written.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    check_member_name(f"{prefix}-000000.tar", where="shard prefix")
    storage = storage or StorageConfig()
    pub = _Publisher(out_uri, storage)
    try:
        pub.remove_stale_manifest()
        rows: list[ShardRow] = []
        seen: set[str] = set()
        batch: list[dict] = []
        if total is None:  # a generator's length is the caller's to give (the progress bar's total)
            total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
        with _progress(progress, total, f"shards {source}/{split}") as advance:
            for index, sample in enumerate(samples):
                key = validate_sample(sample, index=index)
                if key in seen:
                    raise ShardError(f"duplicate sample key {key!r} (sample #{index}) writing {out_uri}")
                seen.add(key)
                batch.append(sample)
                advance(1)
                if len(batch) == samples_per_shard:
                    rows.append(_flush_shard(pub, f"{prefix}-{len(rows):06d}.tar", batch, source, split))
                    batch = []
            if batch:
                rows.append(_flush_shard(pub, f"{prefix}-{len(rows):06d}.tar", batch, source, split))
        if not rows:
            log.warning("no samples for %s/%s: writing an empty manifest at %s", source, split, out_uri)
        _write_manifest_file(pub, rows)
    finally:
        pub.close()
    manifest = Manifest(base_uri=_norm_base(out_uri), rows=rows)
    log.debug("wrote %d samples in %d shards + manifest to %s", manifest.total_samples, len(rows), out_uri)
    return manifest


# ----------------------------------------------------------------------------------------------- reading


def _norm_base(uri: str) -> str:
    """Dataset folder URI without trailing "/"; plain local paths made absolute."""
    uri = uri.rstrip("/")
    return uri if is_remote(uri) or uri.startswith("file://") else os.path.abspath(uri)


def _manifest_location(uri: str) -> tuple[str, str]:
    """(dataset folder URI, manifest URI) for a folder URI or a direct manifest.parquet URI."""
    uri = _norm_base(uri)
    if uri.endswith(".parquet"):
        return uri.rsplit("/", 1)[0], uri
    return uri, join_uri(uri, MANIFEST_NAME)


def read_manifest(uri: str, storage: StorageConfig | None = None) -> Manifest:
    """Read the manifest of a dataset folder (or of a manifest.parquet URI); errors name the file."""
    storage = storage or StorageConfig()
    base, manifest_uri = _manifest_location(uri)
    fs, path = get_filesystem(manifest_uri, storage)

    def _read() -> pa.Table:
        with fs.open(path, "rb") as f:
            return pq.read_table(f)

    try:
        table = with_retries(_read, "read manifest", storage, uri=manifest_uri)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no manifest at {manifest_uri}: the dataset is missing or its writing did not finish"
        ) from None
    missing = [n for n in MANIFEST_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ShardError(f"manifest {manifest_uri} lacks columns {missing}; expected {MANIFEST_SCHEMA.names}")
    rows = []
    for rec in table.select(MANIFEST_SCHEMA.names).to_pylist():
        check_member_name(rec["url"], where=f"manifest {manifest_uri}")
        rows.append(ShardRow(**rec))
    return Manifest(base_uri=base, rows=rows)


def _read_through(uri: str, storage: StorageConfig, expected: int) -> tuple[int, str, list[BadSample]]:
    """One pass over a shard: its size, its sha256 and every rule it breaks, each member read to its end."""
    fs, path = get_filesystem(uri, storage)

    def _pass() -> tuple[int, str, list[BadSample]]:
        with fs.open(path, "rb") as f:
            reader = HashingReader(f)
            bad = [r for r in read_shard_records(reader, f"shard {uri}", expected) if isinstance(r, BadSample)]
            reader.drain()
        return reader.size, reader.hexdigest(), bad

    return with_retries(_pass, "verify shard", storage, uri=uri)


def verify_manifest(uri: str, storage: StorageConfig | None = None) -> Manifest:
    """Recompute every shard's size and sha256 and read every member to its end; raise ChecksumMismatchError
    (bytes differ from the manifest) or ShardError (truncated, unsafe or malformed content) naming the shard."""
    storage = storage or StorageConfig()
    manifest = read_manifest(uri, storage)
    for row, shard_uri in zip(manifest.rows, manifest.shard_urls, strict=True):
        try:
            size, sha, bad = _read_through(shard_uri, storage, row.samples)
        except FileNotFoundError:
            raise ChecksumMismatchError(f"shard {shard_uri} listed in the manifest is missing") from None
        if size != row.bytes or sha != row.sha256:
            raise ChecksumMismatchError(
                f"shard {shard_uri} does not match the manifest: {size} bytes sha256 {sha}, "
                f"expected {row.bytes} bytes sha256 {row.sha256}"
            )
        if bad:
            raise ShardError(f"shard {shard_uri} is unreadable ({bad[0].reason}): {bad[0].message}"
                             + (f"; and {len(bad) - 1} more problem(s)" if len(bad) > 1 else ""))
    log.info("verified %d shards (%d samples) of %s", len(manifest.rows), manifest.total_samples, uri)
    return manifest


def _iter_shard(shard_uri: str, storage: StorageConfig, expected: int | None = None) -> Iterator[dict]:
    """Samples of one tar shard (json decoded); anything ``tar_rules`` flags raises ShardError naming the shard."""
    fs, path = get_filesystem(shard_uri, storage)
    f = with_retries(lambda: fs.open(path, "rb"), "open shard", storage, uri=shard_uri)
    where = f"shard {shard_uri}"
    with f:
        for record in read_shard_records(f, where, expected):
            if isinstance(record, BadSample):
                raise ShardError(record.message)
            key = record["__key__"]
            yield {ext: value if ext == "__key__" else decode_member(ext, value, where=f"{where} member {key}.{ext}")
                   for ext, value in record.items()}


def iter_samples(uri: str, storage: StorageConfig | None = None) -> Iterator[dict]:
    """Yield samples ({"__key__", "json": dict, image bytes...}) from one .tar shard or a dataset folder.

    Single-process reference reader (tests, small tools, the baseline for Ray Data reading).
    """
    storage = storage or StorageConfig()
    if uri.rstrip("/").endswith(".tar"):
        yield from _iter_shard(uri.rstrip("/"), storage)
        return
    manifest = read_manifest(uri, storage)
    for row, shard_uri in zip(manifest.rows, manifest.shard_urls, strict=True):
        yield from _iter_shard(shard_uri, storage, row.samples)
