"""Live training progress for the driver: rank 0 posts (step, loss, samples/s) to the stage monitor actor and
the driver renders it while ``fit()`` blocks — a rich progress bar on a terminal, a plain line every tenth of
the stage otherwise (CI logs, Ray Job logs) — so per-step worker log lines are not needed on the console.

Also the stage's phase clock: wall-clock timestamps of named phases (driver and workers share the host clock on
a local Ray; on a cluster, phases are measured within one process each), reduced to durations for the bench.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


def get_board(name: str):
    """The stage's progress board: its monitor actor (``deco_core.monitor``), shared with the sample counts."""
    from deco_core.monitor import get_monitor

    return get_monitor(name)


def find_board(name: str):
    """The board from inside a worker, or None when the driver did not create one."""
    from deco_core.monitor import find_monitor

    return find_monitor(name)


def _format(stage: str, s: dict[str, Any]) -> str:
    return (f"{stage}: step {s['step']}/{s['total']}  loss {s['loss']:.4f}  {s['samples_per_s']:.0f} samples/s  "
            f"eta {int(s['eta_s'])}s")


@contextmanager
def show_progress(board, stage: str, interval_s: float = 0.5) -> Iterator[None]:
    """Render the board while the body runs (``fit()``); a terminal gets a live bar, a log a line per 10 %.
    The step total comes with each posted state (the driver may plan it while the workers start)."""
    import ray

    stop = threading.Event()
    tty = sys.stdout.isatty()

    def poll() -> Iterator[dict[str, Any]]:
        while not stop.wait(interval_s):
            try:
                state = ray.get(board.read.remote(), timeout=5)
            except Exception:  # the board is advisory: never let it fail a stage
                continue
            if state:
                yield state

    def run_bar() -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]}  {task.fields[sps]} samples/s"), TimeRemainingColumn(),
                      transient=False) as bar:
            task = bar.add_task(stage, total=None, loss="-", sps="-")
            for s in poll():
                bar.update(task, total=s["total"], completed=s["step"], loss=f"{s['loss']:.4f}", sps=f"{s['samples_per_s']:.0f}")

    def run_lines() -> None:
        next_mark, printed = 0.1, 0
        for s in poll():
            total = s["total"]
            if s["step"] > printed and (s["step"] >= next_mark * total or s["step"] == total):
                log.info("%s", _format(stage, s))
                printed = s["step"]
                while next_mark * total <= s["step"]:
                    next_mark += 0.1

    thread = threading.Thread(target=run_bar if tty else run_lines, name=f"progress-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class PhaseClock:
    """Named wall-clock timestamps (``time.time()``) in the order they happened."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def as_metrics(self, prefix: str = "phase/") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in self.marks.items()}


def process_started_at() -> float:
    """Wall-clock start time of this process (``time.time()`` scale): where a Ray worker's life began."""
    import psutil  # a dependency of ray[default]

    return psutil.Process().create_time()


def durations(marks: dict[str, float], order: list[tuple[str, str, str]]) -> dict[str, float]:
    """{phase: end - start} for each (phase, start mark, end mark) whose two marks exist."""
    return {name: round(marks[b] - marks[a], 3) for name, a, b in order if a in marks and b in marks}
