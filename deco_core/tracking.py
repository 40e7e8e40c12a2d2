"""MLflow tracking: tracking-URI resolution, experiments, stable per-stage runs nested under a workflow run,
rank-0 logging behind a small Tracker protocol, and the model registry (aliases champion/challenger)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from deco_core.config import ConfigError, TrackingConfig, flatten, to_dict
from deco_core.data.storage import is_remote, join_uri
from deco_core.secrets import redact_secrets

log = logging.getLogger(__name__)
RUN_NAME_TAG = "deco.run_name"
PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment without this tag in GenAI mode (traces, judges, prompts).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# The settings that tell workflow runs apart in the runs table (logged as params on the parent run).
KEY_SETTINGS = (
    "pipeline.name", "model.projector.name", "model.projector.num_tokens", "model.vision.image_size",
    "model.vision.patch_size", "model.llm.hidden_size", "model.llm.num_layers", "data.caption_samples",
    "data.instruct_samples", "pretrain.lr", "pretrain.max_steps", "pretrain.global_batch_size",
    "pretrain.deepspeed", "finetune.lr", "finetune.max_steps", "finetune.global_batch_size", "finetune.deepspeed",
)
# Stage outputs that are headline scores (logged as metrics on the parent run, named <stage>/<key>).
SYSTEM_METRICS_INTERVAL_S = 10  # seconds between system-metric samples (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins)
HEADLINE_OUTPUTS = {
    "pretrain": ("final_loss", "val_loss"), "finetune": ("final_loss", "val_loss"),
    "analyze": ("mass_lift", "mass_in_box", "pointing_hit_rate"),
}


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
    checkout = Path(__file__).resolve().parent.parent
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


def log_key_settings(client, run_id: str, cfg: Any) -> None:
    """The KEY_SETTINGS of ``cfg`` as params of ``run_id`` (the workflow's parent run)."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    flat = flatten(redact_secrets(to_dict(cfg)))
    params = {k: flat[k] for k in KEY_SETTINGS if k in flat}
    try:
        client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    except MlflowException as exc:  # a resumed parent that already holds other values keeps its own
        log.warning("parent run %s: key settings not logged: %s", run_id, str(exc).splitlines()[0])


def headline_metrics(stage: str, outputs: Mapping[str, Any]) -> dict[str, float]:
    """A stage's headline scores, named as on the parent run: ``eval/*`` as they are, others ``<stage>/<key>``."""
    out = {k: float(v) for k, v in outputs.items() if k.startswith("eval/") and _is_number(v)}
    out.update({f"{'analysis' if stage == 'analyze' else stage}/{k}": float(outputs[k])
                for k in HEADLINE_OUTPUTS.get(stage, ()) if _is_number(outputs.get(k))})
    return out


def log_headline_metrics(client, run_id: str, stage: str, outputs: Mapping[str, Any]) -> None:
    from mlflow.entities import Metric

    metrics = headline_metrics(stage, outputs)
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def log_shard_datasets(client, run_id: str, datasets: Mapping[str, Any], context: str = "training") -> None:
    """Record shard sets as MLflow run inputs: ``datasets`` maps a name to its ``Manifest``. The digest is
    derived from the manifest's per-shard sha256 values, so equal data gives an equal digest."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for name, manifest in datasets.items():
        digest = hashlib.sha256("".join(r.sha256 for r in manifest.rows).encode()).hexdigest()[:16]
        uri = manifest.base_uri
        source = json.dumps({"uri": uri})
        profile = json.dumps({"num_samples": manifest.total_samples, "num_shards": len(manifest.rows)})
        dataset = Dataset(name=name, digest=digest, source_type="s3" if uri.startswith("s3://") else "local",
                          source=source, profile=profile)
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def make_tracker(rank: int, tracking_uri: str | None, run_id: str | None, system_metrics: bool = False) -> Tracker:
    """MlflowTracker on rank 0 with a run, NullTracker elsewhere."""
    if rank != 0 or not tracking_uri or not run_id:
        return NullTracker()
    return MlflowTracker(tracking_uri, run_id, system_metrics)
