"""WebDataset shards and their manifest on local disk or S3: writing (reading back and verifying live in
`deco_core.data.shard_reader`; their names are re-exported here).

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

import pyarrow as pa
import pyarrow.parquet as pq

from deco_core.data.shard_format import (
    ShardError,
    add_tar_member,
    check_member_name,
    encode_sample,
    validate_sample,
)
from deco_core.data.shard_reader import (
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    ChecksumMismatchError,
    Manifest,
    ShardRow,
    iter_samples,
    norm_base,
    read_manifest,
    verify_manifest,
)
from deco_core.data.storage import StorageConfig, copy_file, get_filesystem, is_remote, join_uri, with_retries

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20

__all__ = [
    "MANIFEST_NAME", "MANIFEST_SCHEMA", "ChecksumMismatchError", "Manifest", "ShardError", "ShardRow",
    "iter_samples", "read_manifest", "verify_manifest", "write_shards",
]

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

    Local: the temp file sits beside its target and `os.replace` renames it. S3: the file is uploaded by
    `storage.copy_file` (one ``put_file``, retried); an S3 object (single PUT or multipart upload) only becomes
    visible once the upload completes, so a reader never sees a half-written shard and no `.tmp/` key is needed.
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
        copy_file(tmp, join_uri(self.out_uri, name), self.storage, what=f"upload {name}")
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
    manifest = Manifest(base_uri=norm_base(out_uri), rows=rows)
    log.debug("wrote %d samples in %d shards + manifest to %s", manifest.total_samples, len(rows), out_uri)
    return manifest


