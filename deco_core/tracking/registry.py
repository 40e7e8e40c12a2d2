"""The MLflow model registry side of a finished training: log an exported model as a servable pyfunc model
(``MLmodel``, signature, input example; the export itself under ``artifacts/export``), create a version of the
registered model, tag it, and set aliases (``challenger``; ``champion`` too when the model has none yet).

A remote export (s3://...) is downloaded to a temporary folder first: MLflow uploads artifacts from local files.
Used by the workflow's register stage and by scheduled retraining.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MODEL_ARTIFACT = "model"


def register_model(tracking_uri: str, run_id: str, model_dir: str, name: str, tags: dict[str, Any],
                   aliases: tuple[str, ...] = ("challenger",), storage=None) -> str:
    """Log ``model_dir`` (local or remote) as the run's pyfunc model, create a model version and set aliases;
    returns the version."""
    from deco_core.data.storage import download_dir, is_remote

    with tempfile.TemporaryDirectory(prefix="deco-register-") as tmp:
        export = model_dir
        if is_remote(model_dir):
            export = download_dir(model_dir, Path(tmp) / "export", storage)
            log.info("downloaded %s to %s for registration", model_dir, export)
        pyfunc_dir = _write_pyfunc(export, Path(tmp) / "pyfunc")
        return _register_dir(tracking_uri, run_id, str(pyfunc_dir), name, tags, aliases)


def _write_pyfunc(export: str, out: Path) -> Path:
    from deco_core.model.deco import CONFIG_FILE
    from deco_core.serving import save_pyfunc

    config = Path(export) / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(f"{export}: not an exported DeCo model (missing {CONFIG_FILE}); nothing to register")
    image_size = int(json.loads(config.read_text())["deco_config"]["vision"]["image_size"])
    return save_pyfunc(export, out, image_size)


def _register_dir(tracking_uri: str, run_id: str, pyfunc_dir: str, name: str, tags: dict[str, Any],
                  aliases: tuple[str, ...]) -> str:
    from mlflow.exceptions import MlflowException

    from deco_core.tracking.runs import registry_client

    client = registry_client(tracking_uri)
    client.log_artifacts(run_id, pyfunc_dir, MODEL_ARTIFACT)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="DeCo multimodal LLM (MLflow pyfunc: image + prompt -> "
                                                          "answer; the save_pretrained export in artifacts/export)")
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    version = client.create_model_version(name, source, run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items()})
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    if "champion" not in client.get_registered_model(name).aliases:
        client.set_registered_model_alias(name, "champion", version.version)
        client.set_model_version_tag(name, version.version, "deco.promotion", "first version: champion by default")
    log.info("registered %s version %s (aliases %s)", name, version.version, ", ".join(aliases))
    return str(version.version)


__all__ = ["MODEL_ARTIFACT", "register_model"]
