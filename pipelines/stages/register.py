"""Stage register: log the exported model to MLflow as a servable pyfunc model, register a version under
``tracking.registered_model``, tag it with its eval scores, and point alias ``challenger`` at it (``champion`` too
when there is none). The registry work itself is deco_core.tracking.registry.register_model."""

from __future__ import annotations

from typing import Any

from deco_core.tracking.registry import register_model
from pipelines.workflow.context import StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    """Register the finetuned export, tagged with its fingerprint and the evaluate stage's scores."""
    model = ctx.inputs["finetune"]["model"]
    scores = {k: v for k, v in ctx.inputs.get("evaluate", {}).items() if k.startswith("eval/")}
    name = ctx.cfg.tracking.registered_model
    version = register_model(ctx.tracking_uri, ctx.run_id, model, name,
                             {"deco.fingerprint": ctx.fingerprint[:10], **scores}, storage=ctx.cfg.data.storage)
    return {"registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}"}
