"""Stages pretrain and finetune, one parameterised module: pretrain aligns on captions (``plain`` template),
finetune tunes on instructions (``vicuna_v1``) from the pretrain export; both with Ray Train + DeepSpeed, and both
export the model. With ``pipeline.reuse_train_workers`` the two run on one worker group (a training session,
``deco_core.train.session``): a stage leaves it open when a training stage follows in this workflow run."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from deco_core.config import Config
from deco_core.train.sources import ray_storage, train_sources
from pipelines.ops.runtime import ensure_ray
from pipelines.workflow.context import StageContext

TRAIN_STAGES = ("pretrain", "finetune")


def session_name(cfg: Config) -> str | None:
    """The workflow's training session (stable across runs, so a killed stage resumes its checkpoints), or None
    for a ``fit()`` per stage."""
    if cfg.pipeline.reuse_train_workers and cfg.data.preprocess_ahead:
        return cfg.pipeline.train_session or f"{cfg.pipeline.name}-training"
    return None


def train(ctx: StageContext, stage: str, init_from: str | None = None) -> dict[str, Any]:
    """Run the training stage ``stage`` (pretrain | finetune) and return its outputs."""
    from deco_core.train.session import close_sessions
    from deco_core.train.trainer import run_stage

    cfg = ctx.cfg
    if init_from:
        cfg = replace(cfg, **{stage: replace(getattr(cfg, stage), init_from=init_from)})
    ensure_ray(cfg)
    sources, val_uri = train_sources(cfg, stage, ctx.inputs.get("prepare_data", {}))
    output = getattr(cfg, stage).output_uri or ctx.out_uri("model")
    session = session_name(cfg)
    keep = session is not None and any(s in TRAIN_STAGES for s in ctx.later)
    failed = False
    try:
        result = run_stage(cfg, stage, sources=sources, val_uri=val_uri, output_uri=output, run_name=ctx.run_name,
                           storage_path=ray_storage(cfg), parent_run_id=ctx.parent_run_id, session=session)
    except BaseException:
        failed = True
        raise
    finally:
        if session is not None and (failed or not keep):
            close_sessions(force=failed)  # a failed stage's session never serves another stage
    return {"model": result.output_uri, "steps": result.steps, "final_loss": result.metrics.get("loss"),
            "val_loss": result.metrics.get("val_loss"), "wall_s": round(result.wall_s, 1),
            "checkpoint": result.checkpoint, "mlflow_run": result.run_id,
            "worker_pid": result.metrics.get("worker_pid")}  # rank 0's process: one per training session


def warm(cfg: Config, stage: str) -> None:
    """Open the workflow's training session for ``stage`` now, so that its worker processes start and import
    while the stages ahead of it run (the stage then finds the session open with its worker plan)."""
    from deco_core.train.session import WorkerPlan, session_for
    from deco_core.train.trainer import abs_storage

    session = session_name(cfg)
    if session is not None:
        ensure_ray(cfg)
        session_for(session, WorkerPlan.of(cfg, getattr(cfg, stage), abs_storage(ray_storage(cfg))))


def run_pretrain(ctx: StageContext) -> dict[str, Any]:
    """The pretrain stage."""
    return train(ctx, "pretrain")


def run_finetune(ctx: StageContext) -> dict[str, Any]:
    """The finetune stage: from ``finetune.init_from``, else the pretrain stage's export."""
    return train(ctx, "finetune", init_from=ctx.cfg.finetune.init_from or ctx.inputs["pretrain"]["model"])
