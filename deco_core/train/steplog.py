"""Rank 0's step metrics, committed to tracking only once a checkpoint covers their step.

After a worker restart the stage resumes from its last checkpoint and replays the steps after it; metrics
logged as they happened would then hold two entries for each replayed step. Metrics are held here and written
when a checkpoint is reported (and at the end), so the history holds each step once, as the run that went on
from the checkpoint saw it. Steps the tracking store already holds (a checkpoint reported just before a crash
but not kept by Ray) are never written twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from deco_core.tracking import MlflowTracker, Tracker

log = logging.getLogger(__name__)
STEP_KEY = "train/loss"  # every step log carries it; its history tells which steps are already written


def logged_through(tracker: Tracker, key: str = STEP_KEY) -> int:
    """The last step the tracking store holds for ``key`` (0 when none, or without a store)."""
    if not isinstance(tracker, MlflowTracker):
        return 0
    history = tracker.client.get_metric_history(tracker.run_id, key)
    return max((m.step for m in history), default=0)


class CommittedMetrics:
    """Buffer of (step, metrics) written through ``tracker`` by ``commit``."""

    def __init__(self, tracker: Tracker, written_through: int = 0) -> None:
        self.tracker = tracker
        self.written_through = written_through
        self.pending: list[tuple[int, dict[str, float]]] = []

    def add(self, metrics: Mapping[str, float], step: int) -> None:
        self.pending.append((step, dict(metrics)))

    def commit(self) -> None:
        """Write every held step not already in the store."""
        for step, metrics in self.pending:
            if step <= self.written_through and STEP_KEY in metrics:
                log.debug("step %d is already tracked; not written again", step)
                continue
            self.tracker.log_metrics(metrics, step=step)
        last = max((s for s, m in self.pending if STEP_KEY in m), default=0)
        self.written_through = max(self.written_through, last)
        self.pending.clear()
