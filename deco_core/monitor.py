"""One small named Ray actor per training stage, the stage monitor: preprocessing actors add their per-reason
bad-sample counts to it, rank 0 posts its live progress there, and the driver reads both; the driver posts the
stage's preprocessed training data there for the workers (``deco_core.train.ahead``); a training session's
monitor also carries the stage its workers serve next and each stage's final metrics (``deco_core.train.session``).
One actor (not one per
purpose) because every actor is a process of its own, and process starts are most of a stage's fixed cost on a
small machine."""

from __future__ import annotations

from collections import Counter
from typing import Any

MONITOR_PREFIX = "deco-stage-"


def _monitor_cls():
    import ray

    @ray.remote(num_cpus=0)
    class StageMonitor:
        """Bad-sample counts (``add``/``snapshot``), the latest progress state (``post``/``read``), the
        training data prepared by the driver (``post_data``/``read_data``), and for a training session the next
        stage (``post_stage``/``read_stage``) and the stages' results (``post_result``/``read_result``)."""

        def __init__(self) -> None:
            self.counts: Counter = Counter()
            self.state: dict[str, Any] = {}
            self.data: dict[str, Any] | None = None
            self.stage: dict[str, Any] | None = None
            self.results: dict[int, dict[str, Any]] = {}

        def add(self, counts: dict[str, int]) -> None:
            self.counts.update(counts)

        def snapshot(self) -> dict[str, int]:
            return dict(self.counts)

        def post(self, state: dict[str, Any]) -> None:
            self.state = state

        def read(self) -> dict[str, Any]:
            return self.state

        def post_data(self, data: dict[str, Any]) -> None:
            self.data = data

        def read_data(self) -> dict[str, Any] | None:
            return self.data

        def post_stage(self, item: dict[str, Any]) -> None:
            self.stage = item

        def read_stage(self) -> tuple[dict[str, Any] | None, bool]:
            """(the latest posted stage, whether its result is in)."""
            return self.stage, self.stage is not None and self.stage["seq"] in self.results

        def post_result(self, seq: int, result: dict[str, Any]) -> None:
            self.results[seq] = result

        def read_result(self, seq: int) -> dict[str, Any] | None:
            return self.results.get(seq)

    return StageMonitor


def get_monitor(name: str):
    """The stage's monitor (created on first use); whoever holds the handle keeps it alive."""
    return _monitor_cls().options(name=MONITOR_PREFIX + name, get_if_exists=True).remote()


def find_monitor(name: str):
    """The stage's monitor from inside a worker, or None when nobody created it."""
    import ray

    try:
        return ray.get_actor(MONITOR_PREFIX + name)
    except ValueError:
        return None
