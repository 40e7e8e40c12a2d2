"""The shard member format: sample validation, canonical member encoding, deterministic tar headers and the
safety checks applied when reading members back (tar-slip, key.extension form, JSON decoding)."""

from __future__ import annotations

import io
import json
import re
import tarfile

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,199}$")  # no "." (WebDataset splits key.ext at it)
_EXT_RE = re.compile(r"^[a-z0-9][a-z0-9_\-.]{0,31}$")
_TAR_MTIME = 0  # fixed header fields: the same samples give byte-identical shards


class ShardError(ValueError):
    """A sample, shard or manifest is malformed or unsafe; the message names the file/key at fault."""


def validate_sample(sample: object, index: int) -> str:
    """Check one sample against the schema; return its key. Errors name the sample and the field."""
    if not isinstance(sample, dict):
        raise ShardError(f"sample #{index} is a {type(sample).__name__}, expected a dict")
    key = sample.get("__key__")
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ShardError(f"sample #{index}: __key__ {key!r} is not filesystem-safe; expected 1-200 chars "
                         "of [A-Za-z0-9_-] starting with a letter or digit (no '.', '/')")
    meta = sample.get("json")
    if not isinstance(meta, dict) or not isinstance(meta.get("conversations"), list):
        raise ShardError(f"sample {key!r}: 'json' must be a dict with a 'conversations' list, "
                         f"got {type(meta).__name__}")
    for ext, value in sample.items():
        if ext.startswith("__"):
            continue
        if not _EXT_RE.match(ext):
            raise ShardError(f"sample {key!r}: field name {ext!r} is not a valid member extension")
        if ext != "json" and not isinstance(value, (bytes, bytearray, memoryview, str)):
            raise ShardError(f"sample {key!r}: field {ext!r} is a {type(value).__name__}, expected bytes or str")
    return key


def encode_sample(sample: dict) -> list[tuple[str, bytes]]:
    """(member name, payload) pairs sorted by extension; json is canonical (sorted keys, UTF-8)."""
    key = sample["__key__"]
    members = []
    for ext in sorted(e for e in sample if not e.startswith("__")):  # other "__" fields are metadata
        value = sample[ext]
        if ext == "json":
            try:
                payload = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
            except (TypeError, ValueError) as exc:
                raise ShardError(f"sample {key!r}: 'json' is not JSON-serialisable: {exc}") from None
        else:
            payload = value.encode() if isinstance(value, str) else bytes(value)
        members.append((f"{key}.{ext}", payload))
    return members


def add_tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), _TAR_MTIME, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(payload))


def check_member_name(name: str, where: str) -> None:
    """Reject absolute paths, '..' components and empty names (tar-slip safety)."""
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise ShardError(f"{where}: unsafe member path {name!r} (absolute or containing '..')")


def split_member_name(name: str, where: str) -> tuple[str, str]:
    """'dir/key.ext.more' -> ('dir/key', 'ext.more'), the WebDataset rule (first dot of the basename)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        raise ShardError(f"{where}: member {name!r} has no key.extension form")
    return (f"{head}/{stem}" if head else stem), ext


def decode_member(ext: str, payload: bytes, where: str) -> object:
    """json -> dict (or list); everything else stays bytes."""
    if ext != "json":
        return payload
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{where}: invalid JSON: {exc}") from None
