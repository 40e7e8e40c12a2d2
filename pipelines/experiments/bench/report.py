"""Shared output helpers for ``bench.run`` and ``reproduce.run``: number formatting, markdown
tables, a completeness check (every reported field measured and finite), JSON writing and one MLflow summary
run per invocation (flattened numeric fields as metrics, the written files as artifacts)."""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class IncompleteResultError(RuntimeError):
    """A result field is missing or not finite: a benchmark must never publish a blank."""


def mean_spread(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± sample std (n=k)``; with one value the spread is unknown and the cell says n=1."""
    vals = [float(v) for v in values]
    if not vals:
        raise IncompleteResultError("mean_spread: no values")
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {statistics.stdev(vals):.{digits}f} (n={len(vals)})"


def flatten_numbers(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dict -> {"a/b/c": float} for every int/float leaf (bools and strings are skipped)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_numbers(value, name + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def check_complete(data: Any, where: str = "result") -> None:
    """Raise IncompleteResultError naming the first None, empty or non-finite leaf."""
    if isinstance(data, Mapping):
        if not data:
            raise IncompleteResultError(f"{where}: empty mapping")
        for k, v in data.items():
            check_complete(v, f"{where}.{k}")
    elif isinstance(data, list | tuple):
        if not data:
            raise IncompleteResultError(f"{where}: empty list")
        for i, v in enumerate(data):
            check_complete(v, f"{where}[{i}]")
    elif data is None or data == "":
        raise IncompleteResultError(f"{where}: not measured")
    elif isinstance(data, float) and not math.isfinite(data):
        raise IncompleteResultError(f"{where}: not finite ({data})")


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def log_summary_run(tracking_uri: str, experiment: str, root: Path, run_name: str, params: Mapping[str, Any],
                    metrics: Mapping[str, float], files: Sequence[Path], run_id: str | None = None) -> str:
    """Log params, metrics and artifact files into ``run_id`` (or a new run) and finish it; returns the run id."""
    from mlflow import MlflowClient

    from deco_core.tracking import get_or_create_run, log_batch

    client = MlflowClient(tracking_uri)
    run_id = run_id or get_or_create_run(tracking_uri, experiment, run_name, root, tags={"deco.kind": experiment})
    batch = {_metric_key(k): v for k, v in metrics.items()}
    log_batch(client, run_id, params=params, metrics=batch)
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    log.info("logged %d metrics and %d files to MLflow run %s (%s)", len(batch), len(files), run_id, tracking_uri)
    return run_id


def _metric_key(key: str) -> str:
    """MLflow metric names allow alphanumerics and ``_ - . space : /``; anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in key)
