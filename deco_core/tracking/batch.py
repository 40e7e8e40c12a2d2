"""The one MLflow batch logger (`log_batch`: chunked to MLflow's per-call limits, non-finite metrics dropped,
long params cut), the one artifact logger for a file or a folder (`log_path`), and what is logged on parent runs:
key settings, headline metrics, shard datasets."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deco_core.config import flatten, to_dict
from deco_core.secrets import redact_secrets

log = logging.getLogger(__name__)

#: MLflow's limits for one log_batch call (REST API): metrics, params and tags per request.
MAX_METRICS_PER_CALL, MAX_PARAMS_PER_CALL, MAX_TAGS_PER_CALL = 1000, 100, 100
#: MLflow's longest param value.
MAX_PARAM_CHARS = 6000
# The settings that tell workflow runs apart in the runs table (logged as params on the parent run).
KEY_SETTINGS = (
    "pipeline.name", "model.projector.name", "model.projector.num_tokens", "model.vision.image_size",
    "model.vision.patch_size", "model.llm.hidden_size", "model.llm.num_layers", "data.caption_samples",
    "data.instruct_samples", "pretrain.lr", "pretrain.max_steps", "pretrain.global_batch_size",
    "pretrain.deepspeed", "finetune.lr", "finetune.max_steps", "finetune.global_batch_size", "finetune.deepspeed",
)
# Stage outputs that are headline scores (logged as metrics on the parent run, named <stage>/<key>).
HEADLINE_OUTPUTS = {
    "pretrain": ("final_loss", "val_loss"), "finetune": ("final_loss", "val_loss"),
    "analyze": ("mass_lift", "mass_in_box", "pointing_hit_rate"),
}


def log_batch(client, run_id: str, metrics: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, Any] | None = None, step: int = 0, timestamp_ms: int | None = None) -> int:
    """Log ``metrics`` (None and non-finite values dropped), ``params`` (values cut to MAX_PARAM_CHARS) and ``tags``
    into ``run_id`` in as few calls as MLflow's per-request limits allow; returns the number of calls made."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    ms = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if _finite(v)]
    ps = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in (params or {}).items()]
    ts = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    calls = 0
    while ms or ps or ts:
        client.log_batch(run_id, metrics=ms[:MAX_METRICS_PER_CALL], params=ps[:MAX_PARAMS_PER_CALL],
                         tags=ts[:MAX_TAGS_PER_CALL])
        ms, ps, ts = ms[MAX_METRICS_PER_CALL:], ps[MAX_PARAMS_PER_CALL:], ts[MAX_TAGS_PER_CALL:]
        calls += 1
    return calls


def log_path(client, run_id: str, local: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Log a local file, or every file of a local folder, as artifacts of ``run_id`` under ``artifact_path``."""
    if Path(local).is_dir():
        client.log_artifacts(run_id, str(local), artifact_path)
    else:
        client.log_artifact(run_id, str(local), artifact_path)


def log_key_settings(client, run_id: str, cfg: Any) -> None:
    """The KEY_SETTINGS of ``cfg`` as params of ``run_id`` (the workflow's parent run)."""
    from mlflow.exceptions import MlflowException

    flat = flatten(redact_secrets(to_dict(cfg)))
    try:
        log_batch(client, run_id, params={k: flat[k] for k in KEY_SETTINGS if k in flat})
    except MlflowException as exc:  # a resumed parent that already holds other values keeps its own
        log.warning("parent run %s: key settings not logged: %s", run_id, str(exc).splitlines()[0])


def headline_metrics(stage: str, outputs: Mapping[str, Any]) -> dict[str, float]:
    """A stage's headline scores, named as on the parent run: ``eval/*`` as they are, others ``<stage>/<key>``."""
    out = {k: float(v) for k, v in outputs.items() if k.startswith("eval/") and _is_number(v)}
    out.update({f"{'analysis' if stage == 'analyze' else stage}/{k}": float(outputs[k])
                for k in HEADLINE_OUTPUTS.get(stage, ()) if _is_number(outputs.get(k))})
    return out


def log_headline_metrics(client, run_id: str, stage: str, outputs: Mapping[str, Any]) -> None:
    """A stage's `headline_metrics` on the workflow's parent run."""
    log_batch(client, run_id, metrics=headline_metrics(stage, outputs))


def _finite(value: Any) -> bool:
    """A metric value MLflow can plot: a finite number (numpy and torch scalars too), not None."""
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


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
