"""Driver side of a training stage: Ray Data datasets, the TorchTrainer (scaling, checkpoint and failure
configs), the stable MLflow run, and the stage result (steps, losses, throughput, output URI)."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deco_core.config import Config, TrainConfig, to_dict
from deco_core.data.ray_data import (
    PreprocessSpec,
    build_dataset,
    check_quality,
    preprocess_rows,
)
from deco_core.data.shards import iter_samples
from deco_core.data.transforms import ImageTransform
from deco_core.model.projector_config import projector_num_tokens
from deco_core.model.tokenizer import IMAGE_TOKEN, ensure_special_tokens, image_token_id, load_tokenizer
from deco_core.model.tokenizer_view import tokenizer_view
from deco_core.tracking import get_or_create_run, log_batch, resolve_tracking_uri
from deco_core.train.ahead import DataAhead, TrainingData
from deco_core.train.data_cache import Preprocessed, data_key, holding, keep, lookup
from deco_core.train.deepspeed import build_ds_config
from deco_core.train.fatal import clear_fatal, fatal_uri, raise_recorded
from deco_core.train.faults import fault_hook_from_env
from deco_core.train.loop import train_loop_per_worker
from deco_core.train.loop_state import LoopConfig
from deco_core.train.progress import PhaseClock, durations, get_board, show_progress
from deco_core.train.session import TrainingSession, WorkerPlan, session_for, torch_trainer
from deco_core.train.stream import split_for_workers

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    stage: str
    output_uri: str
    run_id: str | None
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    wall_s: float = 0.0
    data: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds (PHASES)


# (phase, start mark, end mark): driver marks and the workers' marks reported with the final checkpoint.
# fmt: off
PHASES = [
    ("preprocess_ahead",    "call",          "preprocessed"),   # every sample preprocessed once (overlaps fit start)
    ("driver_setup",        "call",          "fit_start"),      # tokenizer, spec, validation set, MLflow run
    ("worker_group_start",  "fit_start",     "worker_process"), # Ray Train controller, placement, worker process spawn
    ("worker_imports",      "worker_process", "worker_start"),  # interpreter, Ray worker, imports, process group
    ("model_build",         "worker_start",  "model_built"),    # imports, model construction / init weights
    ("data_wait_ahead",     "model_built",   "data_ready"),     # waiting for the driver's preprocessing, if any
    ("engine_init",         "data_ready",    "engine_ready"),   # DeepSpeed initialise + resume
    ("data_first_batch",    "engine_ready",  "first_batch"),    # Ray Data pipeline start to the first batch
    ("steps",               "first_batch",   "steps_done"),     # the training steps themselves
    ("validation",          "steps_done",    "val_done"),
    ("export",              "val_done",      "export_done"),    # consolidated state dict + save_pretrained
    ("checkpoint_teardown", "export_done",   "fit_end"),        # final checkpoint, report, worker group shutdown
    ("driver_finish",       "fit_end",       "end"),            # quality counts, MLflow run closed
]
# fmt: on
VAL_MAX_SAMPLES = 4096  # the validation split is preprocessed on the driver: it must stay small


def stage_tokenizer(cfg: Config, t: TrainConfig):
    """The tokenizer the stage trains with: the init model's when continuing, else the configured one."""
    if t.init_from:
        from transformers import AutoTokenizer

        from deco_core.train.checkpoint import load_init_model

        if os.path.isdir(os.path.join(t.init_from, "tokenizer")):
            return ensure_special_tokens(AutoTokenizer.from_pretrained(os.path.join(t.init_from, "tokenizer")))
        return load_init_model(t.init_from).tokenizer
    return load_tokenizer(cfg.model.tokenizer, cfg.model.trust_remote_code, cfg.model.seed)


def num_visual_tokens(cfg: Config) -> int:
    """M for the configured projector (asks the projector; never assumes the patch count)."""
    v = cfg.model.vision
    n = (v.image_size // v.patch_size) ** 2
    return projector_num_tokens(cfg.model.projector, n)


def preprocess_spec(cfg: Config, template: str, tokenizer) -> PreprocessSpec:
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) is not None
    return PreprocessSpec(tokenizer=tokenizer_view(tokenizer), template=template, num_image_tokens=num_visual_tokens(cfg),
                          max_length=cfg.model.tokenizer.max_length,
                          transform=ImageTransform.from_vision_config(cfg.model.vision),
                          image_token_id=image_token_id(tokenizer))


def plan_steps(t: TrainConfig, num_samples: int) -> int:
    """Optimizer steps of the stage: max_steps when set, else epochs × (samples // global batch)."""
    if t.max_steps:
        return t.max_steps
    per_epoch = num_samples // t.global_batch_size
    if per_epoch == 0:
        raise ValueError(f"{num_samples} samples cannot fill one global batch of {t.global_batch_size}")
    return t.epochs * per_epoch


def run_stage(cfg: Config, stage: str, *, sources: list[tuple[str, float]], output_uri: str, run_name: str,
              storage_path: str, val_uri: str | None = None, parent_run_id: str | None = None,
              tracking: bool = True, sample_log: str | None = None, session: str | None = None) -> StageResult:
    """Train one stage on a Ray cluster (``ray.init`` must have been called) and export the model.

    With ``data.preprocess_ahead`` every sample is preprocessed once on a driver thread while ``fit()`` starts the
    workers (``ahead.py``), split into one fixed shard per worker, and each epoch is read in a seeded order, so a
    resumed stage replays the exact sample stream (``stream.py``).
    ``sample_log``: a path prefix; each rank then appends the sample keys of every micro-batch there.
    ``session``: train on the worker group of the training session of that name (``session.py``: opened here, or
    reused when an earlier stage left it open with the same worker plan; needs ``data.preprocess_ahead``) instead
    of a ``fit()`` of the stage's own."""
    import ray

    t: TrainConfig = getattr(cfg, stage)
    started = time.perf_counter()
    clock = PhaseClock()
    clock.mark("call")
    tokenizer = stage_tokenizer(cfg, t)
    spec = preprocess_spec(cfg, t.template, tokenizer)
    board = get_board(run_name)  # the stage monitor: the driver holds the handle, so it lives as long as the stage
    storage = cfg.data.storage
    build_ds_config(t, t.num_workers, t.use_gpu)  # batch layout errors end the stage here, before any worker
    exact = cfg.data.preprocess_ahead
    if session is not None and not exact:
        raise ValueError("a training session needs data.preprocess_ahead=true (its workers take no streamed dataset)")
    # exact replay needs a fixed row order: manifest order in, order kept through the parallel preprocessing
    train_ds, n_train = build_dataset(sources, spec, storage, run_name, cfg.data.preprocess_batch_size,
                                      cfg.data.preprocess_cpus, t.samples_per_epoch, shuffle=not exact, tasks=exact)
    ahead = total_steps = None
    if exact:
        # preprocessed on a driver thread while fit() starts the workers; they collect it from the stage monitor
        key = data_key(sources, spec, storage, {"samples": t.samples_per_epoch, "workers": t.num_workers,
                                                "batch": cfg.data.preprocess_batch_size}) if holding() else None
        ahead = DataAhead(board, lambda: _materialize(train_ds, board, cfg, t, clock, key))
    else:
        total_steps = plan_steps(t, n_train)
        log.warning("stage %s streams its data (data.preprocess_ahead=false): a resumed stage re-reads its epoch "
                    "in a new order, it does not replay the exact sample stream", stage)
        _log_plan(stage, t, n_train, total_steps)
    datasets = {} if exact else {"train": train_ds}
    if val_uri:
        datasets["val"] = validation_dataset(val_uri, spec, storage)
    val_data = datasets.pop("val", None) if session is not None else None
    tracking_uri = run_id = None
    if tracking:
        tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.pipeline.root)
        run_id = get_or_create_run(tracking_uri, cfg.tracking.experiment, run_name, cfg.pipeline.root,
                                   parent_run_id, tags={"deco.stage": stage})
    storage_path = abs_storage(storage_path)
    loop_config = LoopConfig(
        cfg=to_dict(cfg), stage=stage, stage_template=t.template, run_name=run_name, tokenizer=tokenizer,
        total_steps=total_steps, output_uri=abs_storage(output_uri), tracking_uri=tracking_uri, run_id=run_id,
        system_metrics=cfg.tracking.system_metrics, counter_name=run_name, storage=storage, has_val=bool(val_uri),
        val_batch_size=t.micro_batch_size, val_data=val_data, data_ahead=exact, sample_log=sample_log,
        fatal_uri=fatal_uri(storage_path, run_name), fault=fault_hook_from_env(storage_path, run_name),
    )
    clear_fatal(loop_config.fatal_uri, storage)
    if session is not None:
        workers = session_for(session, WorkerPlan.of(cfg, t, storage_path))
        metrics, checkpoint = _run_in_session(workers, loop_config, board, ahead, clock)
    else:
        metrics, checkpoint = _fit(cfg, t, loop_config, datasets, exact, storage_path, board, ahead, clock)
    if ahead is not None:
        total_steps = ahead.result().total_steps  # a failed preprocessing pass raises its own error here
    counts = ray.get(board.snapshot.remote())
    data_metrics = check_quality(counts, cfg.data.max_bad_fraction)
    if tracking and run_id:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        log_batch(client, run_id, metrics=data_metrics, step=int(metrics.get("step", 0)))
        client.set_terminated(run_id, "FINISHED")
    clock.mark("end")
    phases = durations(stage_marks(metrics, clock.marks), PHASES)
    log.info("stage %s phases: %s", stage, "  ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
    return StageResult(stage, loop_config.output_uri, run_id, int(metrics.get("step", total_steps)),
                       {k: v for k, v in metrics.items() if not k.startswith("phase/")},
                       checkpoint, time.perf_counter() - started,
                       data_metrics, phases)


@contextmanager
def _training(board, stage: str, ahead: DataAhead | None, clock: PhaseClock) -> Iterator[None]:
    """Marks fit_start/fit_end around the workers' run with live progress; when it fails, a failed preprocessing
    pass is the cause worth reporting and is raised instead."""
    clock.mark("fit_start")
    try:
        with show_progress(board, stage):
            yield
    except Exception:
        if ahead is not None:
            ahead.result()
        raise
    clock.mark("fit_end")


def _fit(cfg: Config, t: TrainConfig, loop_config: LoopConfig, datasets: dict[str, Any], exact: bool,
         storage_path: str, board, ahead: DataAhead | None, clock: PhaseClock) -> tuple[dict[str, Any], str | None]:
    """The stage on a worker group of its own: one ``fit()``; returns (final metrics, checkpoint path)."""
    from ray.train import DataConfig

    trainer = torch_trainer(train_loop_per_worker, loop_config.to_dict(), loop_config.run_name,
                            WorkerPlan.of(cfg, t, storage_path, session=False), datasets=datasets or None,
                            dataset_config=DataConfig(datasets_to_split=[] if exact else ["train"]))
    with _training(board, t.stage, ahead, clock):
        result = trainer.fit()
    if ahead is not None:
        ahead.result()  # a failed preprocessing pass raises its own error, not the workers' record of it
    raise_recorded(loop_config.fatal_uri, loop_config.storage, cause=getattr(result, "error", None))
    if getattr(result, "error", None):
        raise result.error
    return dict(result.metrics or {}), result.checkpoint.path if result.checkpoint else None


def _run_in_session(session: TrainingSession, loop_config: LoopConfig, board, ahead: DataAhead | None,
                    clock: PhaseClock) -> tuple[dict[str, Any], str | None]:
    """The stage on the session's workers; returns (final metrics, checkpoint path)."""
    with _training(board, loop_config.stage, ahead, clock):
        metrics = session.run(loop_config)
    return metrics, session.checkpoint_path(loop_config.run_name, int(metrics.get("step", 0)))


def _materialize(train_ds, board, cfg: Config, t: TrainConfig, clock: PhaseClock,
                 key: str | None = None) -> TrainingData:
    """Preprocess every sample once (in manifest order), check the bad-sample budget, split one fixed shard per
    worker and plan the steps (runs on the ``DataAhead`` thread). With a ``key`` kept by an earlier stage inside
    ``hold_preprocessed()`` (``data_cache``), that stage's shards serve and its sample counts are replayed."""
    import ray

    kept = lookup(key)
    if kept is not None:
        board.add.remote(kept.counts)
        check_quality(ray.get(board.snapshot.remote()), cfg.data.max_bad_fraction)
        shards, rows = kept.shards, kept.rows
        log.info("stage %s: reusing the preprocessed data of an earlier stage (%d rows, key %s)", t.stage, rows, key)
    else:
        before = ray.get(board.snapshot.remote())
        train_ds.context.execution_options.preserve_order = True
        materialized = train_ds.materialize()  # the epochs re-read these blocks
        counts = ray.get(board.snapshot.remote())
        check_quality(counts, cfg.data.max_bad_fraction)  # all of it is counted now
        shards = split_for_workers(materialized, t.num_workers)
        rows = sum(s.count() for s in shards)
        keep(key, Preprocessed(shards, rows, dict(Counter(counts) - Counter(before))))  # this pass's counts
    clock.mark("preprocessed")
    total_steps = plan_steps(t, rows)
    _log_plan(t.stage, t, rows, total_steps)
    return TrainingData(shards, rows, total_steps)


def _log_plan(stage: str, t: TrainConfig, samples: int, total_steps: int) -> None:
    log.info("stage %s: %d samples, %d optimizer steps of %d (micro %d × accum %d × %d workers), ZeRO config %s",
             stage, samples, total_steps, t.global_batch_size, t.micro_batch_size, t.grad_accum_steps(),
             t.num_workers, t.deepspeed)


def validation_dataset(uri: str, spec: PreprocessSpec, storage):
    """The held-out split, preprocessed here on the driver (it is small) and handed to the workers as an
    in-memory Ray Dataset: no second streaming pipeline and actor pool to start at the end of the stage."""
    import itertools

    import ray

    records = list(itertools.islice(iter_samples(uri, storage), VAL_MAX_SAMPLES + 1))
    if len(records) > VAL_MAX_SAMPLES:
        raise ValueError(f"validation split {uri} holds more than {VAL_MAX_SAMPLES} samples; it is preprocessed on "
                         "the driver, so keep it small (or leave it out)")
    rows, counts = preprocess_rows(records, spec)
    if not rows:
        raise ValueError(f"validation split {uri}: none of its {len(records)} samples is usable ({dict(counts)})")
    return ray.data.from_items([{k: v for k, v in r.items() if k != "key"} for r in rows])


def stage_marks(worker_metrics: dict[str, float], driver_marks: dict[str, float]) -> dict[str, float]:
    """The stage's phase marks: the workers' (``phase/<mark>`` metrics) and the driver's. Workers that started
    before the stage called ``fit()`` (a session opened by a warm start) were not this stage's time: their
    process marks count from ``fit_start``, so the phases stay non-negative and sum to the stage's wall time."""
    marks = {k.removeprefix("phase/"): v for k, v in worker_metrics.items() if k.startswith("phase/")}
    marks.update(driver_marks)
    if "fit_start" in marks:
        for key in ("worker_process", "worker_start"):
            if key in marks:
                marks[key] = max(marks[key], marks["fit_start"])
    return marks


def abs_storage(uri: str) -> str:
    """A local path made absolute (Ray Train's workers resolve it from another directory); URIs as they are."""
    return uri if "://" in uri else str(Path(uri).resolve())
