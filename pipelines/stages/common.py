"""Shared pieces of the stage entry points: ``python -m pipelines.stages.<stage> --config ... [overrides]``
runs that one stage of the workflow (its upstream stages must be complete), which is how cluster submission
runs stages as separate Ray Jobs."""

from __future__ import annotations

import argparse

from deco_core.config import Config
from deco_core.data.storage import join_uri
from deco_core.logs import setup_logging

RAY_JOB_TAG = "deco.ray_job_id"  # on a submitted stage's MLflow run: the Ray job that ran it


def train_sources(cfg: Config, stage: str, prepared: dict) -> tuple[list[tuple[str, float]], str | None]:
    """(sources, validation URI) for a training stage: configured sources, else the prepared ShapesWorld shards."""
    configured = cfg.data.pretrain_sources if stage == "pretrain" else cfg.data.finetune_sources
    if configured:
        return [(s.uri, s.weight) for s in configured], None
    if stage == "finetune" and prepared.get("finetune_formats"):
        # instructions and benchmark-format samples, mixed in proportion to their sizes
        mix = [(prepared["finetune"], float(prepared.get("finetune_samples", 1))),
               (prepared["finetune_formats"], float(prepared.get("finetune_formats_samples", 1)))]
        return mix, prepared.get("val_finetune")
    return [(prepared[stage], 1.0)], prepared.get(f"val_{stage}")


def ray_storage(cfg: Config) -> str:
    """Where Ray Train keeps checkpoints for every stage of this pipeline."""
    return join_uri(cfg.pipeline.root, "ray")


def stage_main(stage: str) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.stages.{stage}",
                                     description=f"Run the workflow stage '{stage}' (upstream stages must be done).")
    parser.add_argument("--config", "-c", default="pipeline/tiny")
    parser.add_argument("--force", action="store_true", help="rerun even if a completed output matches")
    parser.add_argument("--parent-run-id", help="MLflow run to nest this stage's run under (set by the submitter)")
    parser.add_argument("--ray-job-id", help="the Ray job running this stage (a tag on the stage run)")
    parser.add_argument("--end-parent", action="store_true", help="end the parent run after this stage")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    setup_logging()
    from deco_core.config import compose
    from pipelines.workflow import Workflow

    tags = {RAY_JOB_TAG: args.ray_job_id} if args.ray_job_id else {}
    Workflow(compose(args.config, args.overrides), parent_run_id=args.parent_run_id, stage_tags=tags,
             end_parent=args.end_parent).run(only=[stage], force=args.force)
