"""Shared output helpers for ``pipelines.bench`` and ``pipelines.reproduce``: number formatting, markdown
tables, a completeness check (every reported field measured and finite), JSON writing and one MLflow summary
run per invocation (flattened numeric fields as metrics, the written files as artifacts)."""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class IncompleteResultError(RuntimeError):
    """A result field is missing or not finite: a benchmark must never publish a blank."""


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: integers with thousands separators, floats to `digits` significant decimals."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** -digits):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def mean_spread(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± sample std (n=k)``; with one value the spread is unknown and the cell says n=1."""
    vals = [float(v) for v in values]
    if not vals:
        raise IncompleteResultError("mean_spread: no values")
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {statistics.stdev(vals):.{digits}f} (n={len(vals)})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are formatted with ``fmt`` unless already strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"markdown_table: row has {len(row)} cells, header has {len(header)}")
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines)


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
    from mlflow.entities import Metric, Param

    from deco_core.tracking import get_or_create_run

    client = MlflowClient(tracking_uri)
    run_id = run_id or get_or_create_run(tracking_uri, experiment, run_name, root, tags={"deco.kind": experiment})
    now = int(time.time() * 1000)
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    batch = [Metric(_metric_key(k), float(v), now, 0) for k, v in metrics.items() if math.isfinite(float(v))]
    for i in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[i:i + 500])
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    log.info("logged %d metrics and %d files to MLflow run %s (%s)", len(batch), len(files), run_id, tracking_uri)
    return run_id


def _metric_key(key: str) -> str:
    """MLflow metric names allow alphanumerics and ``_ - . space : /``; anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in key)
