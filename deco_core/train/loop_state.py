"""What the training loop is given and what it carries: ``LoopConfig`` (driver -> every worker) and
``WorkerContext`` (one worker's running state), plus ``StepStats`` between two log lines.

``LoopConfig`` crosses the Ray boundary as a plain dict (``to_dict`` / ``from_dict``: Ray Train's
``train_loop_config`` is a dict); the loop reads only the typed fields.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from deco_core.train.faults import FaultHook
from deco_core.train.progress import PhaseClock


@dataclass
class LoopConfig:
    """Everything a Ray Train worker needs for one stage, built by the driver (``deco_core.train.trainer``)."""

    cfg: dict[str, Any]
    """The resolved config as ``deco_core.config.to_dict`` output (DeepSpeed settings included)."""
    stage: str
    """``pretrain`` or ``finetune``: the section of ``cfg`` that is trained."""
    stage_template: str
    """Chat template of the stage; a non-plain one is stored in the export."""
    run_name: str
    """Ray Train run name; also names the driver's progress board."""
    tokenizer: Any
    """The stage's tokenizer object."""
    total_steps: int | None
    """Optimizer steps planned for the stage; None when they come with the data (``data_ahead``)."""
    output_uri: str
    """Where rank 0 exports the model."""
    tracking_uri: str | None = None
    """MLflow tracking URI; None disables tracking."""
    run_id: str | None = None
    """The MLflow run every attempt logs to."""
    system_metrics: bool = False
    """Log MLflow system metrics from rank 0."""
    counter_name: str | None = None
    """Name of the driver's bad-sample counter actor (None: no data-quality metrics)."""
    storage: Any = None
    """``StorageConfig`` for remote URIs."""
    has_val: bool = False
    """A ``val`` dataset shard is attached to the trainer."""
    val_data: Any = None
    """The validation split as a small in-memory Ray Dataset passed with the stage (a worker group that serves
    several stages cannot take per-stage trainer datasets); None: the trainer's ``val`` shard, if any."""
    val_batch_size: int = 1
    """Micro-batch size of the validation pass."""
    data_ahead: bool = False
    """The driver preprocesses the data while the workers start and posts one materialized shard per worker
    (exact replay) and the step count to the stage monitor (``deco_core.train.ahead``); False: stream the
    ``train`` dataset shard."""
    sample_log: str | None = None
    """Path prefix of the per-rank sample-key ledger, or None."""
    fatal_uri: str | None = None
    """Where a non-retryable error is recorded (``deco_core.train.fatal``)."""
    fault: FaultHook | None = None
    """Test-only fault injection (``deco_core.train.faults``); None in production."""

    def to_dict(self) -> dict[str, Any]:
        """Shallow dict for Ray Train's ``train_loop_config`` (values are passed as they are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopConfig:
        """Inverse of ``to_dict``; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TypeError(f"LoopConfig: unknown keys {unknown}; expected among {sorted(names)}")
        return cls(**data)


@dataclass
class StepStats:
    """Accumulates timing and token counts between two log lines."""

    t0: float = 0.0
    data_wait: float = 0.0
    samples: int = 0
    tokens: int = 0
    loss_sum: float = 0.0
    micro: int = 0

    def reset(self) -> None:
        self.t0, self.data_wait, self.samples, self.tokens, self.loss_sum, self.micro = time.perf_counter(), 0, 0, 0, 0, 0


@dataclass
class WorkerContext:
    """One worker's running state, shared by the epoch loop, step logging and the stage's end."""

    rank: int
    world: int
    clock: PhaseClock
    transform: Any
    """The ``ImageTransform`` of the model's vision tower (validation batches are collated with it)."""
    ledger: Any
    """``SampleLedger`` of the micro-batches' sample keys."""
    counter: Any = None
    """Bad-sample counter actor handle (rank 0 reads it when logging), or None."""
    board: Any = None
    """The driver's progress board actor (rank 0 only), or None."""
    max_bad_fraction: float = 0.0
    fault: FaultHook | None = None
    run_name: str = ""
    """The stage's run: names its checkpoints (``ray_checkpoint.py``)."""
    stats: StepStats = field(default_factory=StepStats)
    last_loss: float = float("nan")
    history: list[tuple[int, float]] = field(default_factory=list)
    """(step, rank-averaged loss) of every logged step."""
    steps_t0: float = field(default_factory=time.perf_counter)
    start_step: int = 0
    posted_at: float = 0.0
    """perf_counter time of the last progress post."""
    posted: tuple[int, float] | None = None
    """(step, time) of the last progress post."""


__all__ = ["LoopConfig", "StepStats", "WorkerContext"]
