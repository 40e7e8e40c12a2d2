"""The rules for reading one tar shard, shared by every reader: the single-process reader and ``--verify``
(``deco_core.data.shards``) and the Ray Data read tasks (``deco_core.data.ray_data``).

``read_shard_records`` walks a tar stream, groups members by sample key and yields either a record
(``{"__key__", ext: bytes, ...}``) or a ``BadSample`` naming a counter reason:

=================  ==========================================================================================
reason             when
=================  ==========================================================================================
unsafe_path        a member name is absolute or contains '..' (tar-slip); its whole sample is dropped
unsafe_member      a member is a link, device or other non-regular file
malformed_member   a member name has no key.extension form, or a sample has two members with one extension
split_sample       the members of one sample are not contiguous (the WebDataset rule)
truncated_shard    the stream ends inside a member (``unexpected end of data``), or holds fewer samples than
                   its manifest row says; ``count`` is the number of samples lost
=================  ==========================================================================================

Readers decide what a ``BadSample`` means: the Ray Data path counts it and goes on, the single-process reader
and ``verify`` raise, naming the shard.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from deco_core.data.shard_format import ShardError, check_member_name, split_member_name


@dataclass(frozen=True)
class BadSample:
    """A sample (or, for ``truncated_shard``, ``count`` samples) a reader must not use, and why."""

    reason: str
    key: str
    message: str
    count: int = 1


class HashingReader:
    """A read-only file wrapper that hashes (sha256) and counts every byte read through it."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.fileobj, self.size, self._digest = fileobj, 0, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fileobj.read(n)
        self._digest.update(data)
        self.size += len(data)
        return data

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read the rest of the file (tar padding after the last member)."""
        while self.read(chunk):
            pass

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _member_problem(member: tarfile.TarInfo, where: str) -> tuple[str, str] | None:
    """(reason, message) when a member breaks a rule, else None."""
    try:
        check_member_name(member.name, where=where)
    except ShardError as exc:
        return "unsafe_path", str(exc)
    if not member.isfile():
        return "unsafe_member", f"{where}: member {member.name!r} is not a regular file (links are rejected)"
    return None


def _key_of(name: str) -> str:
    """The sample key a (possibly malformed) member name belongs to: everything before the basename's first dot."""
    head, _, base = name.rpartition("/")
    stem = base.partition(".")[0]
    return f"{head}/{stem}" if head else stem


class _Grouper:
    """Members -> samples: the current sample, the keys already finished, and the first problem of the sample."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.current: dict | None = None
        self.problem: tuple[str, str] | None = None
        self.done: set[str] = set()
        self.good = self.bad = 0

    def flush(self) -> dict | BadSample | None:
        """The finished current sample (a record or a BadSample), or None when there is none."""
        if self.current is None:
            return None
        key, out = self.current["__key__"], self.current
        self.done.add(key)
        self.current = None
        if self.problem is not None:
            reason, message = self.problem
            self.problem = None
            self.bad += 1
            return BadSample(reason, key, message)
        self.good += 1
        return out

    def start(self, key: str) -> dict | BadSample | None:
        """Begin sample ``key`` if it is a new one; returns the sample it finishes."""
        if self.current is not None and self.current["__key__"] == key:
            return None
        finished = self.flush()
        self.current = {"__key__": key}
        if key in self.done:
            self.problem = ("split_sample", f"{self.where}: members of sample {key!r} are not contiguous")
        return finished

    def flag(self, reason: str, message: str) -> None:
        if self.problem is None:
            self.problem = (reason, message)


def read_shard_records(fileobj: IO[bytes], where: str, expected: int | None = None) -> Iterator[dict | BadSample]:
    """Records and BadSamples of one tar stream, in order; every member is read to its end.

    ``expected`` (the manifest's sample count) turns a shortfall into a ``truncated_shard`` BadSample: samples
    read (good or bad) fewer than the manifest says. A stream that ends inside a member yields the samples
    completed before it, then one ``truncated_shard`` for the rest (at least 1).
    """
    group = _Grouper(where)
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                problem = _member_problem(member, where)
                name = member.name
                if (finished := group.start(_key_of(name))) is not None:
                    yield finished
                if problem is not None:
                    group.flag(*problem)
                    continue
                payload = tar.extractfile(member).read()  # type: ignore[union-attr]
                try:
                    _, ext = split_member_name(name, where=where)
                except ShardError as exc:
                    group.flag("malformed_member", str(exc))
                    continue
                if ext in group.current:  # type: ignore[operator]
                    group.flag("malformed_member", f"{where}: sample {group.current['__key__']!r} "  # type: ignore[index]
                               f"has two {ext!r} members")
                    continue
                group.current[ext] = payload  # type: ignore[index]
    except tarfile.ReadError as exc:
        lost = max(1, (expected or 0) - group.good - group.bad)
        yield BadSample("truncated_shard", (group.current or {}).get("__key__", ""),
                        f"{where}: the tar stream is cut short ({exc}) after {group.good + group.bad} complete "
                        f"samples; {lost} sample(s) lost", count=lost)
        return
    if (finished := group.flush()) is not None:
        yield finished
    read = group.good + group.bad
    if expected is not None and read < expected:
        yield BadSample("truncated_shard", "", f"{where}: holds {read} samples, its manifest row says {expected}",
                        count=expected - read)
