"""The per-stage job entry: ``python -m pipelines.workflow.job <stage> --config ... [--force] [--parent-run-id ID]
[--ray-job-id ID] [--end-parent] [overrides]`` runs that one stage of the workflow (its upstream stages must be
complete), which is how cluster submission (pipelines.ops.submit) runs stages as separate Ray Jobs."""

from __future__ import annotations

import argparse

from deco_core.logs import setup_logging
from pipelines.workflow.context import RAY_JOB_TAG
from pipelines.workflow.dag import STAGES

PROG = "python -m pipelines.workflow.job"


def parser() -> argparse.ArgumentParser:
    """The job's command line."""
    p = argparse.ArgumentParser(prog=PROG, description="Run one workflow stage (upstream stages must be done).")
    p.add_argument("stage", choices=STAGES, help="the stage to run")
    p.add_argument("--config", "-c", default="pipeline/tiny")
    p.add_argument("--force", action="store_true", help="rerun even if a completed output matches")
    p.add_argument("--parent-run-id", help="MLflow run to nest this stage's run under (set by the submitter)")
    p.add_argument("--ray-job-id", help="the Ray job running this stage (a tag on the stage run)")
    p.add_argument("--end-parent", action="store_true", help="end the parent run after this stage")
    p.add_argument("overrides", nargs="*")
    return p


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run the one stage."""
    args = parser().parse_intermixed_args(argv)
    setup_logging()
    from deco_core.config import compose
    from pipelines.workflow.runner import Workflow

    tags = {RAY_JOB_TAG: args.ray_job_id} if args.ray_job_id else {}
    Workflow(compose(args.config, args.overrides), parent_run_id=args.parent_run_id, stage_tags=tags,
             end_parent=args.end_parent).run(only=[args.stage], force=args.force)


if __name__ == "__main__":
    main()
