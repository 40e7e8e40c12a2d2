"""Reading WebDataset datasets back: the manifest (schema, rows, `read_manifest`), full verification of every
shard against it (`verify_manifest`) and the single-process sample reader (`iter_samples`). Writing lives in
`deco_core.data.shards`, which re-exports these names."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from deco_core.data.shard_format import ShardError, check_member_name, decode_member
from deco_core.data.storage import StorageConfig, get_filesystem, is_remote, join_uri, with_retries
from deco_core.data.tar_rules import BadSample, HashingReader, read_shard_records

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"
MANIFEST_SCHEMA = pa.schema(
    [("url", pa.string()), ("samples", pa.int64()), ("bytes", pa.int64()), ("sha256", pa.string()),
     ("source", pa.string()), ("split", pa.string())]
)

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


def norm_base(uri: str) -> str:
    """Dataset folder URI without trailing "/"; plain local paths made absolute."""
    uri = uri.rstrip("/")
    return uri if is_remote(uri) or uri.startswith("file://") else os.path.abspath(uri)


def _manifest_location(uri: str) -> tuple[str, str]:
    """(dataset folder URI, manifest URI) for a folder URI or a direct manifest.parquet URI."""
    uri = norm_base(uri)
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
