"""Stage register: log the exported model to MLflow, register a version under ``tracking.registered_model``,
tag it with its eval scores, and point alias ``challenger`` at it (``champion`` too when there is none)."""

from __future__ import annotations

import logging
from typing import Any

from pipelines.stages.common import stage_main

log = logging.getLogger(__name__)


def register_model(tracking_uri: str, run_id: str, model_dir: str, name: str, tags: dict[str, Any],
                   aliases: tuple[str, ...] = ("challenger",)) -> str:
    """Upload ``model_dir`` as run artifacts, create a model version and set aliases; returns the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    client.log_artifacts(run_id, model_dir, "model")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="DeCo multimodal LLM (exported save_pretrained format)")
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    version = client.create_model_version(name, source, run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items()})
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    if "champion" not in client.get_registered_model(name).aliases:
        client.set_registered_model_alias(name, "champion", version.version)
        client.set_model_version_tag(name, version.version, "deco.promotion", "first version: champion by default")
    log.info("registered %s version %s (aliases %s)", name, version.version, ", ".join(aliases))
    return str(version.version)


def run(ctx) -> dict[str, Any]:
    model = ctx.inputs["finetune"]["model"]
    scores = {k: v for k, v in ctx.inputs.get("evaluate", {}).items() if k.startswith("eval/")}
    name = ctx.cfg.tracking.registered_model
    version = register_model(ctx.tracking_uri, ctx.run_id, model, name,
                             {"deco.fingerprint": ctx.fingerprint[:10], **scores})
    return {"registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}"}


if __name__ == "__main__":
    stage_main("register")
