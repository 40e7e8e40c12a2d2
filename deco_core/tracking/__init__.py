"""MLflow tracking: runs and experiments (`runs`), rank-0 trackers (`trackers`), the one batch logger and what
goes on parent runs (`batch`), the model registry (`registry`: imported from its own module). The public
names of runs, trackers and batch are re-exported here: ``from deco_core.tracking import X``."""

from __future__ import annotations

from deco_core.tracking.batch import (
    HEADLINE_OUTPUTS,
    KEY_SETTINGS,
    MAX_METRICS_PER_CALL,
    MAX_PARAMS_PER_CALL,
    MAX_TAGS_PER_CALL,
    headline_metrics,
    log_batch,
    log_headline_metrics,
    log_key_settings,
    log_path,
    log_shard_datasets,
)
from deco_core.tracking.runs import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    PARENT_TAG,
    RUN_NAME_TAG,
    ensure_experiment,
    get_or_create_run,
    registry_client,
    resolve_tracking_uri,
    source_tags,
)
from deco_core.tracking.trackers import (
    SYSTEM_METRICS_INTERVAL_S,
    MlflowTracker,
    NullTracker,
    Tracker,
    make_tracker,
)

__all__ = [
    "EXPERIMENT_KIND_TAG", "HEADLINE_OUTPUTS", "KEY_SETTINGS", "MAX_METRICS_PER_CALL", "MAX_PARAMS_PER_CALL",
    "MAX_TAGS_PER_CALL", "MODEL_TRAINING_KIND", "PARENT_TAG", "RUN_NAME_TAG",
    "SYSTEM_METRICS_INTERVAL_S", "MlflowTracker", "NullTracker", "Tracker", "ensure_experiment", "get_or_create_run",
    "headline_metrics", "log_batch", "log_headline_metrics", "log_key_settings", "log_path", "log_shard_datasets",
    "make_tracker", "registry_client", "resolve_tracking_uri", "source_tags",
]
