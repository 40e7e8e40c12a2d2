"""Stage analyze: R-GAE relevance maps and the locality score on a fixed ShapesWorld sample set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.stages.common import stage_main


def run(ctx) -> dict[str, Any]:
    from deco_core.cli_analyze import run_analysis
    from deco_core.tracking import MlflowTracker

    cfg = ctx.cfg
    model = ctx.inputs["finetune"]["model"]
    out_dir = Path(ctx.out_uri())
    result = run_analysis(model, out_dir, cfg.analysis.num_samples, cfg.eval.seed)
    scores = {k: float(v) for k, v in result.get("scores", {}).items() if isinstance(v, int | float)}
    if ctx.run_id:
        tracker = MlflowTracker(ctx.tracking_uri, ctx.run_id)
        tracker.log_metrics({f"analysis/{k}": v for k, v in scores.items()}, step=0)
        tracker.log_artifact(str(out_dir), "analysis")
    return {"model": model, "out_dir": str(out_dir), **{k: round(v, 4) for k, v in scores.items()}}


if __name__ == "__main__":
    stage_main("analyze")
