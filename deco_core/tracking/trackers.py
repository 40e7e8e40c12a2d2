"""Rank-0 logging behind a small Tracker protocol: MlflowTracker (params, step metrics, artifacts, tags and
system metrics into one run) on rank 0, NullTracker elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from deco_core.config import flatten
from deco_core.secrets import redact_secrets
from deco_core.tracking.batch import log_batch, log_path

log = logging.getLogger(__name__)

SYSTEM_METRICS_INTERVAL_S = 10  # seconds between system-metric samples (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins)


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
        flat = flatten(redact_secrets(dict(params)))
        existing = self.client.get_run(self.run_id).data.params  # a resumed run keeps the values it has
        log_batch(self.client, self.run_id, params={k: v for k, v in flat.items() if k not in existing})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        log_batch(self.client, self.run_id, metrics=metrics, step=step)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        log_path(self.client, self.run_id, path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        log_batch(self.client, self.run_id, tags=tags)

    def finish(self, status: str | None = "FINISHED") -> None:
        """Stop system metrics; mark the run terminated unless ``status`` is None (the driver does it)."""
        if self._system is not None:
            _stop_system_metrics(self._system)
            self._system = None
        if status is not None:
            self.client.set_terminated(self.run_id, status=status)


def _start_system_metrics(tracking_uri: str, run_id: str):
    """CPU/memory (and GPU where present) metrics sampled in a background thread into the run.

    The tracking URI is passed to the monitor: without it the monitor takes the process default, which in a Ray
    worker is a new ``mlflow.db`` in Ray's temp folder (``Failed to get mlflow run``) and nothing is logged.
    """
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=True,
                                       tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as exc:  # optional dependency (psutil) or API change: training must go on
        log.warning("system metrics disabled: %s", exc)
        return None


def _stop_system_metrics(monitor) -> None:
    """Stop the monitor and publish the sample it collected since its last publication (MLflow drops it on
    shutdown, so a stage shorter than the sampling interval would log no system metrics at all)."""
    try:
        monitor.finish()
        leftover = monitor.aggregate_metrics()
        if leftover:
            monitor.publish_metrics(leftover)
            monitor.mlflow_logger.flush()
    except Exception as exc:  # metrics are best effort: the stage's result stands
        log.warning("system metrics: last sample not logged: %s", exc)


def make_tracker(rank: int, tracking_uri: str | None, run_id: str | None, system_metrics: bool = False) -> Tracker:
    """MlflowTracker on rank 0 with a run, NullTracker elsewhere."""
    if rank != 0 or not tracking_uri or not run_id:
        return NullTracker()
    return MlflowTracker(tracking_uri, run_id, system_metrics)
