"""MLflow runs: tracking-URI resolution, experiments, source tags, the registry client and stable per-stage runs
nested under a workflow run (found again by name on resume)."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from deco_core.config import ConfigError, TrackingConfig
from deco_core.data.storage import is_remote, join_uri

log = logging.getLogger(__name__)

RUN_NAME_TAG = "deco.run_name"
PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment without this tag in GenAI mode (traces, judges, prompts).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"

def resolve_tracking_uri(cfg: TrackingConfig, root: str | os.PathLike) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else a sqlite store under a local run root.

    A remote root (s3://...) has no place for a sqlite file: it needs a tracking server, and saying so at start
    beats a store written to a local folder literally named ``s3:``.
    """
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if is_remote(str(root)):
        raise ConfigError(f"config key 'pipeline.root' = {str(root)!r} is remote, so the MLflow store cannot live "
                          "under it: set tracking.tracking_uri (or MLFLOW_TRACKING_URI) to an MLflow server, e.g. "
                          "tracking.tracking_uri=http://127.0.0.1:5000")
    root_path = Path(root).resolve()
    root_path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root_path / 'mlruns.db'}"


def ensure_experiment(client, name: str, root: str | os.PathLike) -> str:
    """Experiment id for ``name``; a new one keeps artifacts beside a local store (not in the CWD)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:  # older experiments: mark them, never overwrite a user's choice
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return exp.experiment_id
    uri = client.tracking_uri if hasattr(client, "tracking_uri") else ""
    location = None
    if str(uri).startswith(("sqlite:", "file:")) or "://" not in str(uri):  # a local store: artifacts by the root
        location = join_uri(str(root), "mlartifacts") if is_remote(str(root)) else \
            (Path(root).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location,
                                    tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})


@functools.cache
def source_tags() -> dict[str, str]:
    """MLflow's source tags for runs started by this process: entry point, and the git commit and branch when
    the package runs from a git checkout (an installed package has none)."""
    tags = {"mlflow.source.name": Path(sys.argv[0]).name or "python", "mlflow.source.type": "LOCAL"}
    checkout = Path(__file__).resolve().parents[2]  # deco_core/tracking/runs.py -> the checkout
    if not (checkout / ".git").exists():
        return tags
    for tag, args in (("mlflow.source.git.commit", ["rev-parse", "HEAD"]),
                      ("mlflow.source.git.branch", ["rev-parse", "--abbrev-ref", "HEAD"])):
        try:
            out = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            break
        if out.returncode == 0 and out.stdout.strip():
            tags[tag] = out.stdout.strip()
    return tags


def registry_client(tracking_uri: str):
    """An ``MlflowClient`` whose model registry is the tracking server's own.

    MLflow otherwise takes the registry from a process-wide setting (``mlflow.set_registry_uri`` or
    ``MLFLOW_REGISTRY_URI``) when one was set earlier in the process, and a version would be registered in a store
    the run does not live in (and that ``models:/`` URIs served from the tracking server cannot see).
    """
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def get_or_create_run(tracking_uri: str, experiment: str, run_name: str, root: str | os.PathLike,
                      parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """The id of the unfinished run named ``run_name`` in the experiment, or of a new one.

    Relaunching a stage with the same run name therefore continues the same MLflow run; when it is relaunched
    from a new workflow run, the existing run is moved under the new parent.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp_id = ensure_experiment(client, experiment, root)
    query = f"tags.`{RUN_NAME_TAG}` = '{run_name}' and attributes.status != 'FINISHED'"
    found = client.search_runs([exp_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"])
    if found:
        run_id = found[0].info.run_id
        if parent_run_id and found[0].data.tags.get(PARENT_TAG) != parent_run_id:
            client.set_tag(run_id, PARENT_TAG, parent_run_id)
        if found[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return run_id
    all_tags = {**source_tags(), RUN_NAME_TAG: run_name, **(tags or {})}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    return run.info.run_id
