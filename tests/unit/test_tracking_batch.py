"""`log_batch` is the one MLflow batch logger: chunks to MLflow's per-request limits, drops values MLflow cannot
plot, cuts long params; key settings and headline metrics go through it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from deco_core.tracking import (
    MAX_METRICS_PER_CALL,
    MAX_PARAMS_PER_CALL,
    log_batch,
    log_headline_metrics,
    log_path,
)


class RecordingClient:
    """Stands in for MlflowClient.log_batch and checks MLflow's per-request limits on every call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, list[Any]]] = []

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        assert run_id == "run-1"
        assert len(metrics) <= 1000 and len(params) <= 100 and len(tags) <= 100
        self.calls.append({"metrics": list(metrics), "params": list(params), "tags": list(tags)})

    def log_artifact(self, run_id: str, local: str, artifact_path: str | None = None) -> None:
        self.calls.append({"file": [local, artifact_path]})

    def log_artifacts(self, run_id: str, local: str, artifact_path: str | None = None) -> None:
        self.calls.append({"folder": [local, artifact_path]})


def test_large_batches_are_split_at_mlflow_limits() -> None:
    """1,050 metrics and 130 params take two calls; every entity is logged exactly once."""
    client = RecordingClient()
    metrics = {f"m{i}": float(i) for i in range(1050)}
    params = {f"p{i}": i for i in range(130)}
    calls = log_batch(client, "run-1", metrics=metrics, params=params, tags={"t": "v"}, step=7)
    assert calls == len(client.calls) == 2 == math.ceil(1050 / MAX_METRICS_PER_CALL)
    assert math.ceil(130 / MAX_PARAMS_PER_CALL) == 2
    logged = [m for c in client.calls for m in c["metrics"]]
    assert {m.key for m in logged} == set(metrics) and len(logged) == 1050
    assert all(m.step == 7 for m in logged)
    assert sorted(p.key for c in client.calls for p in c["params"]) == sorted(params)
    assert [t.key for c in client.calls for t in c["tags"]] == ["t"]


def test_unplottable_values_are_dropped_and_long_params_cut() -> None:
    """None, NaN, inf and non-numbers are not logged; numpy scalars are; a 7,000-char param is cut to 6,000."""
    client = RecordingClient()
    log_batch(client, "run-1", metrics={"a": None, "b": float("nan"), "c": float("inf"), "d": "x",
                                        "e": np.float32(0.5), "f": 3}, params={"long": "x" * 7000})
    (call,) = client.calls
    assert {m.key: m.value for m in call["metrics"]} == {"e": 0.5, "f": 3.0}
    assert len(call["params"][0].value) == 6000
    assert log_batch(client, "run-1") == 0  # nothing to log: no call


def test_headline_metrics_use_the_batch_logger() -> None:
    """A stage's headline outputs land on the parent run in one call, named <stage>/<key> or eval/*."""
    client = RecordingClient()
    log_headline_metrics(client, "run-1", "finetune", {"final_loss": 1.5, "val_loss": None, "model": "/x",
                                                       "eval/score": 0.25})
    (call,) = client.calls
    assert sorted((m.key, m.value) for m in call["metrics"]) == [("eval/score", 0.25), ("finetune/final_loss", 1.5)]


def test_log_path_logs_a_file_or_a_whole_folder(tmp_path: Path) -> None:
    """A file goes through log_artifact, a folder through log_artifacts, both under the given artifact path."""
    client = RecordingClient()
    (tmp_path / "scores.json").write_text("{}")
    log_path(client, "run-1", tmp_path / "scores.json", "eval")
    log_path(client, "run-1", tmp_path, None)
    assert client.calls == [{"file": [str(tmp_path / "scores.json"), "eval"]}, {"folder": [str(tmp_path), None]}]
