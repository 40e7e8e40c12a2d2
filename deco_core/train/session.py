"""A training session: one Ray Train worker group (one ``fit()``) that serves several training stages in turn.

Every ``fit()`` starts a Ray Train controller and fresh worker processes that import torch, transformers and
DeepSpeed again: on a small machine that is most of a stage's fixed cost (``make bench`` (i)). A session pays
it once per workflow. Its workers run ``session_loop_per_worker``: take the next stage's ``LoopConfig`` from the
session monitor, train it with the code a one-stage ``fit()`` runs (``loop.train_stage``), post its final
metrics, wait for the next stage, until the driver closes the session.

Failures keep the one-stage semantics: Ray Train restarts the worker group (``max_failures``), the new workers
take up the stage in progress and resume it from that stage's own latest checkpoint (``ray_checkpoint.py``); a
stage whose result is posted is never trained again. The Ray Train run is named after the session (stable per
workflow), so a workflow killed mid-stage resumes that stage's checkpoint in its next run.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from deco_core.config import Config, TrainConfig
from deco_core.data.storage import join_uri
from deco_core.train.fatal import raise_recorded
from deco_core.train.loop_state import LoopConfig
from deco_core.train.ray_checkpoint import checkpoint_dir_name

log = logging.getLogger(__name__)
POLL_S = 0.1  # workers between stages
DRIVER_POLL_S = 0.5  # the driver waiting for a stage (as often as the progress board is read)


@dataclass(frozen=True)
class WorkerPlan:
    """What stages must agree on to share one worker group."""

    num_workers: int
    cpus_per_worker: float
    use_gpu: bool
    max_failures: int
    num_to_keep: int
    log_level: str
    storage_path: str

    @classmethod
    def of(cls, cfg: Config, t: TrainConfig, storage_path: str, session: bool = True) -> WorkerPlan:
        """The plan of stage ``t``. Ray Train counts worker-group failures per ``fit()``, so a session may fail
        as often as its stages together may (pretrain.max_failures + finetune.max_failures); a stage on a
        ``fit()`` of its own (``session=False``) has its own budget."""
        budget = cfg.pretrain.max_failures + cfg.finetune.max_failures if session else t.max_failures
        return cls(t.num_workers, float(t.cpus_per_worker), t.use_gpu, budget, t.num_to_keep, cfg.ray.log_level,
                   storage_path)


def torch_trainer(loop_fn: Any, loop_config: dict[str, Any], name: str, plan: WorkerPlan, **datasets_kw: Any):
    """A TorchTrainer for ``plan`` (scaling, logging, checkpoint and failure configs) running ``loop_fn``;
    ``datasets_kw``: TorchTrainer's ``datasets`` / ``dataset_config``, if any."""
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": plan.cpus_per_worker, **({"GPU": 1} if plan.use_gpu else {})}
    return TorchTrainer(
        loop_fn,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=plan.storage_path,
                             logging_config=ray.train.LoggingConfig(log_level=plan.log_level),
                             checkpoint_config=CheckpointConfig(num_to_keep=plan.num_to_keep),
                             failure_config=FailureConfig(max_failures=plan.max_failures)),
        **datasets_kw,
    )


class TrainingSession:
    """Driver side: starts ``fit()`` on a thread at once; ``run`` trains one stage, ``close`` ends the fit."""

    def __init__(self, name: str, plan: WorkerPlan) -> None:
        from deco_core.monitor import get_monitor

        self.name, self.plan = name, plan
        self._board_name = f"session-{name}-{uuid.uuid4().hex[:8]}"
        self.board = get_monitor(self._board_name)
        self._seq = 0
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._trainer = torch_trainer(session_loop_per_worker, {"board": self._board_name}, name, plan)
        self._thread = threading.Thread(target=self._fit, name=f"train-session-{name}", daemon=True)
        self._thread.start()
        log.info("training session %s: one worker group for the training stages (%d worker(s))", name,
                 plan.num_workers)

    def _fit(self) -> None:
        try:
            self._trainer.fit()
        except BaseException as exc:  # raised by run() in the driver's thread
            self._error = exc
        finally:
            self._done.set()

    @property
    def alive(self) -> bool:
        return not self._done.is_set()

    def checkpoint_path(self, run_name: str, step: int) -> str:
        """Where the stage ``run_name``'s checkpoint at ``step`` was persisted (a later stage of the session may
        rotate it out under ``num_to_keep``; the stage's export is its durable output)."""
        return join_uri(self.plan.storage_path, self.name, checkpoint_dir_name(run_name, step))

    def run(self, lc: LoopConfig) -> dict[str, Any]:
        """Train the stage ``lc`` on the session's workers; returns its final metrics (step, losses, phase marks).
        Raises the stage's recorded non-retryable error, or the fit's error, if the workers end without it."""
        import ray

        if not self.alive:
            raise RuntimeError(f"training session {self.name} has ended; it cannot run stage {lc.stage}")
        self._seq += 1
        seq = self._seq
        ray.get(self.board.post_stage.remote({"seq": seq, "loop": lc.to_dict()}))
        while True:
            result = ray.get(self.board.read_result.remote(seq))
            if result is not None:
                return result
            if self._done.wait(DRIVER_POLL_S) and ray.get(self.board.read_result.remote(seq)) is None:
                if lc.fatal_uri:
                    raise_recorded(lc.fatal_uri, lc.storage, cause=self._error)
                if self._error is not None:
                    raise self._error
                raise RuntimeError(f"training session {self.name} ended before stage {lc.stage} finished")

    def close(self, timeout_s: float = 300.0) -> None:
        """Tell the workers to return and wait for ``fit()`` to end. With a stage still in flight (the driver is
        failing or interrupted) the workers only see the stop after it, so wait a few seconds only: the worker
        group ends with the driver's Ray session."""
        import ray

        if self.alive:
            in_flight = self._seq > 0 and ray.get(self.board.read_result.remote(self._seq)) is None
            ray.get(self.board.post_stage.remote({"seq": self._seq + 1, "stop": True}))
            wait_s = min(timeout_s, 5.0) if in_flight else timeout_s
            self._thread.join(wait_s)
            if self._thread.is_alive():
                log.warning("training session %s still running after %.0fs%s; leaving it to end with Ray", self.name,
                            wait_s, " (a stage was in flight)" if in_flight else "")
        if self._error is not None:
            log.warning("training session %s ended with %s: %s", self.name, type(self._error).__name__, self._error)


_OPEN: dict[str, TrainingSession] = {}
_HOLDS = 0  # callers inside hold_sessions(): a workflow's end leaves its session open for the next workflow


def session_for(name: str, plan: WorkerPlan) -> TrainingSession:
    """The open session ``name`` when its plan matches and its workers are up, else a new one (an open session
    with another plan is closed first)."""
    current = _OPEN.get(name)
    if current is not None and (current.plan != plan or not current.alive):
        current.close()
        current = None
    if current is None:
        current = _OPEN[name] = TrainingSession(name, plan)
    return current


def close_sessions(force: bool = False) -> None:
    """Close every open session (the workflow's end, or a failed stage). Inside ``hold_sessions`` only a forced
    close (a failure) does: a healthy session then serves the next workflow."""
    if _HOLDS and not force:
        log.debug("training sessions %s held open for the next workflow", sorted(_OPEN))
        return
    while _OPEN:
        _OPEN.popitem()[1].close()


@contextmanager
def hold_sessions() -> Iterator[None]:
    """Workflows run inside this block share their training sessions: a workflow that ends leaves its session
    open, and the next one that names the same session with the same worker plan trains on the same worker
    group (no controller start, process spawn or imports). Every session is closed when the block ends."""
    global _HOLDS
    _HOLDS += 1
    try:
        yield
    finally:
        _HOLDS -= 1
        if not _HOLDS:
            close_sessions()


def _next_stage(board: Any, done: int) -> dict[str, Any]:
    """Worker side: the first posted stage after ``done`` whose result is not in (a stop item counts)."""
    import ray

    while True:
        item, finished = ray.get(board.read_stage.remote())
        if item is not None and item["seq"] > done and (item.get("stop") or not finished):
            return item
        time.sleep(POLL_S)


def session_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of a session's workers: train each posted stage, rank 0 posts its result, until stopped."""
    import ray.train

    from deco_core.logs import setup_logging
    from deco_core.train.loop import train_stage
    from deco_core.train.progress import find_board

    rank = ray.train.get_context().get_world_rank()
    setup_logging(rank)
    board = find_board(config["board"])
    if board is None:
        raise RuntimeError(f"training session monitor {config['board']} is gone: the driver has ended")
    done, served = 0, False
    while True:
        item = _next_stage(board, done)
        if item.get("stop"):
            return
        final = train_stage(LoopConfig.from_dict(item["loop"]), picked_at=time.time() if served else None)
        if final is None:  # an earlier attempt recorded an error a retry cannot fix: the driver raises it
            return
        if rank == 0:
            ray.get(board.post_result.remote(item["seq"], final))
        done, served = item["seq"], True
        gc.collect()


__all__ = ["TrainingSession", "WorkerPlan", "close_sessions", "hold_sessions", "session_for",
           "session_loop_per_worker", "torch_trainer"]
