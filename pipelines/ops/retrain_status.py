"""The registry's retraining history: the "retrain-decision" runs ``promote_if_better`` records, newest first.

A scheduled retrain that never fired leaves no decision run at all (for example a RayCronJob while the KubeRay
operator's ``RayCronJob`` feature gate is off), and ``deco retrain status`` says so. Reading the history never
creates a store, an experiment or a run.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from deco_core.config import Config
from deco_core.data.storage import is_remote

DECISION_KIND = "retrain-decision"


@dataclass
class DecisionRecord:
    """One recorded decision (or a round that ended before deciding: ``decision`` is then ``none``)."""

    started: str  # UTC, ISO 8601 to the second
    decision: str  # bootstrap | promoted | rejected | none
    challenger_version: str
    champion_version: str  # the champion it was compared with ("none": there was none)
    champion_after: str
    metric: str
    challenger_score: str
    champion_score: str
    margin: str
    run_status: str
    run_id: str

    @property
    def promoted(self) -> bool:
        return self.decision in ("promoted", "bootstrap")


def history_location(cfg: Config) -> tuple[str, str]:
    """(tracking URI, experiment) where ``retrain(cfg)`` records its decisions (the same resolution as the round,
    except that a local root's sqlite store is named, not created)."""
    from deco_core.tracking import resolve_tracking_uri

    root = cfg.pipeline.root if is_remote(cfg.pipeline.root) else str(Path(cfg.pipeline.root).resolve())
    if cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or is_remote(root):
        return resolve_tracking_uri(cfg.tracking, root), cfg.tracking.experiment
    return f"sqlite:///{Path(root) / 'mlruns.db'}", cfg.tracking.experiment


def decision_history(tracking_uri: str, experiment: str, model_name: str, limit: int = 10) -> list[DecisionRecord]:
    """The last ``limit`` retrain rounds of ``model_name`` in ``experiment``, newest first ([] when none)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{DECISION_KIND}'",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    records = []
    for run in runs:
        tags = run.data.tags
        if tags.get("deco.registered_model", model_name) != model_name:
            continue
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        records.append(DecisionRecord(
            started, tags.get("deco.decision", "none"), tags.get("deco.challenger_version", "-"),
            tags.get("deco.champion_version", "-"), tags.get("deco.champion_after", "-"), tags.get("deco.metric", "-"),
            tags.get("deco.challenger_score", "-"), tags.get("deco.champion_score", "-"), tags.get("deco.margin", "-"),
            run.info.status, run.info.run_id))
    return records


__all__ = ["DECISION_KIND", "DecisionRecord", "decision_history", "history_location"]
