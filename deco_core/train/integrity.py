"""Checkpoint integrity and our own resume state, without pickle.

Every rank writes its part of a checkpoint into a directory of its own (Ray merges them): our resume state as
JSON (rank 0), then, last and atomically, a manifest of the SHA-256 of every file the rank wrote. Before
DeepSpeed's ``load_checkpoint`` (which unpickles torch files) the merged directory is verified: every rank's
manifest present, every listed file present with its hash, no file that no manifest lists. A checkpoint that
fails is refused with the file named. The hashes catch corruption, partial copies and files dropped into the
store; they do not make an untrusted store safe (whoever can write the store can rewrite the manifests too).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

MANIFEST_PREFIX = "deco-manifest.rank"
STATE_FILE = "deco-state.json"
STATE_FORMAT = 1


class CheckpointIntegrityError(RuntimeError):
    """A checkpoint whose files do not match the manifests written when it was saved."""


@dataclass
class ResumeState:
    """Where the stream and the optimizer stand (stored as JSON beside DeepSpeed's files)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress
    epoch_samples: int = 0  # samples of the epoch in progress already consumed, all ranks together
    consumed_samples: int = 0  # samples consumed since the stage started, all ranks together
    seed: int = 0  # the stage seed the sample order and the per-step RNG derive from
    world_size: int = 1
    shard_rows: int = 0  # rows in each rank's shard (0: streaming, no fixed shards)
    format: int = STATE_FORMAT


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and not p.name.startswith(MANIFEST_PREFIX))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_state(directory: str | os.PathLike, state: ResumeState) -> None:
    _atomic_write(Path(directory) / STATE_FILE, json.dumps(asdict(state), indent=1, sort_keys=True))


def write_manifest(directory: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Hash every file this rank wrote under ``directory``; the manifest is written last, atomically."""
    root = Path(directory)
    entries = {rel: sha256_file(root / rel) for rel in _files(root)}
    path = root / f"{MANIFEST_PREFIX}{rank}.json"
    _atomic_write(path, json.dumps({"rank": rank, "world_size": world_size, "files": entries}, indent=1))
    return path


def verify_checkpoint(directory: str | os.PathLike) -> dict[str, str]:
    """Check the merged checkpoint against its manifests; returns {file: sha256}; raises naming the file."""
    root = Path(directory)
    manifests = sorted(root.glob(f"{MANIFEST_PREFIX}*.json"))
    if not manifests:
        raise CheckpointIntegrityError(f"checkpoint {root} has no {MANIFEST_PREFIX}*.json manifest: refusing to "
                                       "load it (it was not written by this version, or its manifest was removed)")
    expected: dict[str, str] = {}
    ranks: set[int] = set()
    world = None
    for m in manifests:
        try:
            doc = json.loads(m.read_text())
            ranks.add(int(doc["rank"]))
            world = int(doc["world_size"])
            listed = dict(doc["files"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointIntegrityError(f"checkpoint manifest {m} is unreadable ({exc}): refusing to load") from exc
        for rel, digest in listed.items():
            if expected.setdefault(rel, digest) != digest:
                raise CheckpointIntegrityError(f"checkpoint file {root / rel}: the manifests disagree on its hash")
    missing_ranks = set(range(world or 0)) - ranks
    if missing_ranks:
        raise CheckpointIntegrityError(f"checkpoint {root}: no manifest from rank(s) {sorted(missing_ranks)} of "
                                       f"{world}: refusing to load an incomplete checkpoint")
    present = set(_files(root))
    for rel in sorted(expected):
        if rel not in present:
            raise CheckpointIntegrityError(f"checkpoint file {root / rel} is missing (listed in the manifest)")
        actual = sha256_file(root / rel)
        if actual != expected[rel]:
            raise CheckpointIntegrityError(f"checkpoint file {root / rel} has sha256 {actual[:16]}…, the manifest "
                                           f"says {expected[rel][:16]}…: refusing to load a modified checkpoint")
    extra = sorted(present - set(expected))
    if extra:
        raise CheckpointIntegrityError(f"checkpoint file {root / extra[0]} is not listed in any manifest "
                                       f"({len(extra)} unlisted file(s)): refusing to load it")
    return expected


def read_state(directory: str | os.PathLike) -> ResumeState:
    """Our resume state from JSON (call after ``verify_checkpoint``)."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise CheckpointIntegrityError(f"checkpoint {directory} has no {STATE_FILE}")
    doc = json.loads(path.read_text())
    if doc.get("format") != STATE_FORMAT:
        raise CheckpointIntegrityError(f"{path}: format {doc.get('format')!r}, expected {STATE_FORMAT}")
    known = {f.name for f in fields(ResumeState)}
    return ResumeState(**{k: int(v) for k, v in doc.items() if k in known})
