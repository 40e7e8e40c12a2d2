"""Stage analyze: R-GAE relevance maps and the locality score on a fixed ShapesWorld sample set.

Figures and JSON are written to a local folder first; for a remote root (s3://...) that folder is then uploaded
to the stage's output URI through the storage layer, so nothing lands in a local folder named after the URI.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from deco_core.analysis.run import run_analysis
from deco_core.data.storage import is_remote, upload_dir
from deco_core.tracking import MlflowTracker
from pipelines.workflow.context import StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    """Score the finetuned model; a remote root gets the folder uploaded to the stage's output URI."""
    out_uri = ctx.out_uri()
    if not is_remote(out_uri):
        return _analyze(ctx, Path(out_uri), out_uri)
    with tempfile.TemporaryDirectory(prefix="deco-analyze-") as tmp:
        outputs = _analyze(ctx, Path(tmp), out_uri)
        upload_dir(tmp, out_uri, ctx.cfg.data.storage)
    return outputs


def _analyze(ctx: StageContext, local_dir: Path, out_uri: str) -> dict[str, Any]:
    """Score the finetuned model into ``local_dir``; log metrics and the folder to the stage's MLflow run."""
    cfg = ctx.cfg
    model = ctx.inputs["finetune"]["model"]
    result = run_analysis(model, local_dir, cfg.analysis.num_samples, cfg.eval.seed, storage=cfg.data.storage)
    scores = {k: float(v) for k, v in result.get("scores", {}).items() if isinstance(v, int | float)}
    if ctx.run_id:
        tracker = MlflowTracker(ctx.tracking_uri, ctx.run_id)
        tracker.log_metrics({f"analysis/{k}": v for k, v in scores.items()}, step=0)
        tracker.log_artifact(str(local_dir), "analysis")
    return {"model": model, "out_dir": out_uri, **{k: round(v, 4) for k, v in scores.items()}}

