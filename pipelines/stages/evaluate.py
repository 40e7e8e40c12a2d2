"""Stage evaluate: batch generation on Ray Data actors over a frozen eval set, scores to MLflow + a report."""

from __future__ import annotations

from typing import Any

from deco_core.eval.eval_sets import eval_data
from pipelines.ops.runtime import ensure_ray
from pipelines.workflow.context import StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    """Evaluate the finetuned model on the configured tasks; scores and report to MLflow."""
    from dataclasses import replace

    from deco_core.eval.runner import evaluate

    cfg = ctx.cfg
    ensure_ray(cfg)
    model = ctx.inputs["finetune"]["model"]
    tracking = replace(cfg.tracking, tracking_uri=ctx.tracking_uri)  # log into the workflow's store
    result = evaluate(model, cfg.eval.tasks, eval_data(cfg), ctx.out_uri(), cfg.eval, tracking,
                      storage=cfg.data.storage, run_id=ctx.run_id)
    return {"model": model, "report": result["report"], "predictions": result["predictions"],
            "scores": result["predictions"].rsplit("/", 1)[0] + "/scores.json",
            **{k: round(v, 4) for k, v in result["metrics"].items() if not k.endswith("n_errors")}}

