"""Preprocessing ahead of the steps, overlapped with Ray Train's start.

With ``data.preprocess_ahead`` every sample is preprocessed once before the first step. The driver does that on
a thread (``DataAhead``) while ``fit()`` starts the controller and the worker processes (seconds of process
starts and imports that do not need the data); the result, one fixed shard per worker and the planned number
of optimizer steps, goes to the stage monitor, where each worker collects it (``wait_training_data``) when it
first needs it: before DeepSpeed, whose LR schedule needs the step count. A failed preprocessing pass is posted
as well: the workers stop with a non-retryable error and the driver raises the original exception.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The stage's preprocessed training data, as the workers receive it."""

    shards: list[Any]
    """One materialized Ray Dataset per worker (a fixed assignment of rows to ranks)."""
    rows: int
    """Rows over all shards."""
    total_steps: int
    """Optimizer steps planned for the stage."""


class DataAhead:
    """Runs ``prepare`` on a driver thread and posts its result (or its error) to the stage monitor ``board``."""

    def __init__(self, board: Any, prepare: Callable[[], TrainingData]) -> None:
        self._board = board
        self._result: TrainingData | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(prepare,), name="preprocess-ahead", daemon=True)
        self._thread.start()

    def _run(self, prepare: Callable[[], TrainingData]) -> None:
        try:
            data = prepare()
        except BaseException as exc:  # re-raised by result() in the driver's thread
            self._error = exc
            self._board.post_data.remote({"error": f"{type(exc).__name__}: {exc}"})
            return
        self._result = data
        self._board.post_data.remote({"shards": data.shards, "total_steps": data.total_steps})

    def result(self) -> TrainingData:
        """The prepared data; raises what ``prepare`` raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def wait_training_data(board: Any, timeout_s: float = 3600.0, poll_s: float = 0.1) -> tuple[list[Any], int]:
    """Worker side: (this stage's shards, total steps) once the driver posted them. A failed preprocessing pass
    raises ValueError (not retryable: the same data fails again); no post within ``timeout_s`` raises
    TimeoutError."""
    import ray

    if board is None:
        raise RuntimeError("the stage monitor is gone: the driver that preprocesses this stage's data has ended")
    deadline = time.monotonic() + timeout_s
    while True:
        posted = ray.get(board.read_data.remote())
        if posted is not None:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no training data from the driver after {timeout_s:.0f}s")
        time.sleep(poll_s)
    if "error" in posted:
        raise ValueError(f"preprocessing the training data failed on the driver: {posted['error']}")
    return posted["shards"], int(posted["total_steps"])
