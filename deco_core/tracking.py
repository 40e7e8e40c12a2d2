"""MLflow tracking: tracking-URI resolution, experiments, stable per-stage runs nested under a workflow run,
rank-0 logging behind a small Tracker protocol, and the model registry (aliases champion/challenger)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from deco_core.config import TrackingConfig, flatten, redact_secrets

log = logging.getLogger(__name__)
RUN_NAME_TAG = "deco.run_name"
PARENT_TAG = "mlflow.parentRunId"


def resolve_tracking_uri(cfg: TrackingConfig, root: str | os.PathLike) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else a sqlite store under the run root."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root_path = Path(root).resolve()
    root_path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root_path / 'mlruns.db'}"


def ensure_experiment(client, name: str, root: str | os.PathLike) -> str:
    """Experiment id for ``name``; a new one keeps artifacts beside a local store (not in the CWD)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = client.tracking_uri if hasattr(client, "tracking_uri") else ""
    location = None
    if str(uri).startswith(("sqlite:", "file:")) or "://" not in str(uri):
        location = (Path(root).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


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
    all_tags = {RUN_NAME_TAG: run_name, **(tags or {})}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def finish(self, status: str | None = "FINISHED") -> None: ...


class NullTracker:
    """Used on ranks other than 0 and when tracking is off."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def finish(self, status: str | None = "FINISHED") -> None:
        pass


class MlflowTracker:
    """Logs into one existing run through the client API (no global active-run state)."""

    def __init__(self, tracking_uri: str, run_id: str, system_metrics: bool = False) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self._system = None
        if system_metrics:
            self._system = _start_system_metrics(tracking_uri, run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(redact_secrets(dict(params)))
        existing = self.client.get_run(self.run_id).data.params
        batch = [Param(k, str(v)[:6000]) for k, v in flat.items() if k not in existing]
        for i in range(0, len(batch), 100):
            self.client.log_batch(self.run_id, params=batch[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def finish(self, status: str | None = "FINISHED") -> None:
        """Stop system metrics; mark the run terminated unless ``status`` is None (the driver does it)."""
        if self._system is not None:
            self._system.finish()
            self._system = None
        if status is not None:
            self.client.set_terminated(self.run_id, status=status)


def _start_system_metrics(tracking_uri: str, run_id: str):
    """CPU/memory (and GPU where present) metrics sampled in a background thread into the run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=10, resume_logging=True)
        os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri)
        monitor.start()
        return monitor
    except Exception as exc:  # optional dependency (psutil) or API change: training must go on
        log.warning("system metrics disabled: %s", exc)
        return None


def make_tracker(rank: int, tracking_uri: str | None, run_id: str | None, system_metrics: bool = False) -> Tracker:
    """MlflowTracker on rank 0 with a run, NullTracker elsewhere."""
    if rank != 0 or not tracking_uri or not run_id:
        return NullTracker()
    return MlflowTracker(tracking_uri, run_id, system_metrics)
