"""Who runs a workflow and whether it still does: an ``Owner`` (host, pid, the process's start time) written into
the root lock and into each running stage record, and a ``Heartbeat`` thread that refreshes them while the run
lives. A record is alive while its owner is: on this host, its pid runs the same process (a reused pid has another
start time); on another host, while its heartbeat is younger than STALE_AFTER_S (the clocks must roughly agree).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)
HEARTBEAT_S = 10.0  # how often a running workflow refreshes its lock and its running stage record
STALE_AFTER_S = 120.0  # a heartbeat older than this means its owner is gone (other hosts: the only sign)


def process_start_time(pid: int) -> float | None:
    """The start time (epoch seconds) of process ``pid``, or None when no such process runs."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


@dataclass(frozen=True)
class Owner:
    """A process that holds a root or runs a stage: host name, pid, its start time and when it took over."""

    host: str
    pid: int
    proc_start: float | None
    since: float

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), process_start_time(os.getpid()), time.time())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Owner | None:
        """The owner written by ``to_dict``; None for a record without one (or an unreadable one)."""
        try:
            return cls(str(data["host"]), int(data["pid"]), data.get("proc_start"), float(data["since"]))
        except (KeyError, TypeError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_process(self, other: Owner | None) -> bool:
        return other is not None and (self.host, self.pid, self.proc_start) == (other.host, other.pid,
                                                                              other.proc_start)

    def alive(self) -> bool | None:
        """On this host: whether the process still runs (same pid, same start time); elsewhere None (unknown)."""
        if self.host != socket.gethostname():
            return None
        started = process_start_time(self.pid)
        if started is None:
            return False
        return self.proc_start is None or abs(started - self.proc_start) < 1.0

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host} pid {self.pid} since {since}"


def owner_alive(owner: Owner | None, heartbeat: float | None, now: float | None = None) -> bool:
    """Whether a run owned by ``owner`` with its last ``heartbeat`` still lives (see the module docstring)."""
    if owner is None:
        return False
    alive = owner.alive()
    if alive is not None:
        return alive
    return heartbeat is not None and (now or time.time()) - heartbeat < STALE_AFTER_S


class Heartbeat:
    """A daemon thread calling ``beat()`` every ``interval_s`` seconds until ``stop()``; a failing beat is logged
    and retried on the next tick (a run is not stopped because one refresh failed)."""

    def __init__(self, beat: Callable[[], None], interval_s: float = HEARTBEAT_S) -> None:
        self._beat = beat
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="deco-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception as exc:  # storage hiccup: the next beat tries again
                from deco_core.secrets import redact

                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("heartbeat not written: %s", redact(first))
