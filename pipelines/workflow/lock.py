"""One workflow run per root: ``<root>/workflow/run.lock``, created exclusively, holds its owner (host, pid, the
process's start time, since when) and a heartbeat.

Local roots: the file is written beside the lock and hard-linked into place, which fails if a lock exists (the
O_EXCL rule, with the content in place at the moment the lock appears). S3 roots: a conditional put
(``If-None-Match: *``, s3fs's exclusive ``xb`` mode), refused by the store when the object exists; the lock is read
back after the put, so a store that ignores the condition (older S3-compatible servers) is caught unless two runs
write within the same moment: that window is the documented limit there.

A lock whose owner is gone (same host: the pid no longer runs that process; any host: its heartbeat is older than
liveness.STALE_AFTER_S) is taken over with a warning; a live one stops the second run at once with RootLocked,
naming the holder and the lock. The lock is re-entrant within a process (a workflow run inside a workflow run).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

from deco_core.data.storage import StorageConfig, get_filesystem, is_remote, join_uri
from pipelines.workflow.liveness import Owner, owner_alive

log = logging.getLogger(__name__)
LOCK_PARTS = ("workflow", "run.lock")
_HELD: dict[str, int] = {}  # lock URI -> re-entry depth in this process


class RootLocked(RuntimeError):
    """Another live workflow run holds the root; the message names it and the lock file."""


class RootLock:
    """The run lock of ``root``; use as a context manager, or ``acquire()`` / ``release()``."""

    def __init__(self, root: str, storage: StorageConfig | None = None) -> None:
        self.root = root
        self.uri = join_uri(root, *LOCK_PARTS)
        self.fs, self.path = get_filesystem(self.uri, storage)
        self.owner = Owner.me()

    def __enter__(self) -> RootLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def holder(self) -> tuple[Owner | None, float | None] | None:
        """(owner, heartbeat) written in the lock, or None when there is no lock."""
        try:
            with self.fs.open(self.path, "rb") as f:
                data = json.loads(f.read().decode() or "{}")
        except FileNotFoundError:
            return None
        except ValueError:  # torn or foreign content: an owner we cannot name
            return None, None
        return Owner.from_dict(data.get("owner")), data.get("heartbeat")

    def acquire(self) -> None:
        """Take the lock; take over a stale one with a warning; RootLocked when a live run holds it."""
        if _HELD.get(self.uri):
            _HELD[self.uri] += 1
            return
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        for _ in range(3):
            if self._create():
                _HELD[self.uri] = 1
                log.info("run lock %s taken (%s)", self.uri, self.owner.describe())
                return
            found = self.holder()
            if found is None:
                continue  # released meanwhile
            owner, heartbeat = found
            if owner is not None and owner_alive(owner, heartbeat):
                raise RootLocked(
                    f"pipeline.root {self.root} is in use by another workflow run ({owner.describe()}; lock "
                    f"{self.uri}): wait for it to end, or remove the lock file if that process is gone")
            who = owner.describe() if owner else "an unreadable owner"
            log.warning("taking over the stale run lock %s of %s (%s)", self.uri, who,
                        "process gone" if owner and owner.alive() is False else "no heartbeat")
            self._remove_if(found)
        raise RootLocked(f"could not take the run lock {self.uri}: other runs keep taking it; try again")

    def release(self) -> None:
        """Drop one re-entry; the last removes the lock file if it is still ours."""
        depth = _HELD.get(self.uri, 0)
        if depth > 1:
            _HELD[self.uri] = depth - 1
            return
        _HELD.pop(self.uri, None)
        found = self.holder()
        if found and self.owner.same_process(found[0]):
            self.fs.rm(self.path)

    def refresh(self) -> None:
        """Write a new heartbeat into a lock this process holds (a plain overwrite: the lock is ours)."""
        if _HELD.get(self.uri):
            with self.fs.open(self.path, "wb") as f:
                f.write(self._content())

    def _content(self) -> bytes:
        return json.dumps({"owner": self.owner.to_dict(), "heartbeat": time.time()}).encode()

    def _create(self) -> bool:
        """Create the lock with our content if none exists; False when one does."""
        if is_remote(self.uri):
            return self._create_remote()
        tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(self._content())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _create_remote(self) -> bool:
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(self._content())
        except FileExistsError:
            return False
        self.fs.invalidate_cache(self.path)
        found = self.holder()  # a store that ignored the condition: the last writer's content is there
        return bool(found) and self.owner.same_process(found[0])

    def _remove_if(self, expected: tuple[Owner | None, Any]) -> None:
        """Remove the lock if it still holds ``expected`` (a takeover racing another one removes nothing new)."""
        if self.holder() == expected:
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass
