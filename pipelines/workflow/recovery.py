"""What a workflow run that is gone (its driver killed) left behind, put straight by the next run on the root:
stage records still "running" become "interrupted", and their MLflow runs and that run's parent, when still
RUNNING, become KILLED with a tag saying why. The next run holds the root lock, so no other process runs there.
A rerun of an interrupted stage continues its MLflow run and its last checkpoint as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pipelines.workflow.liveness import Owner

log = logging.getLogger(__name__)
INTERRUPTED_TAG = "deco.interrupted"


def recover_interrupted(store: Any, me: Owner, client: Any) -> dict[str, str]:
    """Mark what other processes left running in ``store`` (a workflow StateStore) interrupted, and their
    MLflow runs KILLED through ``client``; returns run id -> what it was (the runs examined)."""
    with store.mutex:
        state = store.load()
        gone = {name: rec for name, rec in state["stages"].items()
                if rec.get("status") == "running" and not me.same_process(Owner.from_dict(rec.get("owner")))}
        for rec in gone.values():
            rec.update(status="interrupted", interrupted=time.time())
        previous = state.get("workflow", {})
        parent_gone = bool(previous.get("parent_run_id")) and previous.get("status") == "running" and \
            not me.same_process(Owner.from_dict(previous.get("owner")))
        if parent_gone:
            previous.update(status="interrupted", finished=time.time())
        if gone or parent_gone:
            store.save(state)
    runs = {rec["run_id"]: f"stage {name}" for name, rec in gone.items() if rec.get("run_id")}
    if parent_gone:
        runs[previous["parent_run_id"]] = "workflow parent"
    for run_id, what in runs.items():
        kill_if_running(client, run_id, what)
    return runs


def kill_if_running(client: Any, run_id: str, what: str) -> None:
    """Set MLflow run ``run_id`` KILLED (tagged INTERRUPTED_TAG) if it is still RUNNING."""
    from mlflow.exceptions import MlflowException

    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, INTERRUPTED_TAG, "its workflow run ended without closing it (driver gone)")
        client.set_terminated(run_id, "KILLED")
    except MlflowException as exc:
        log.warning("MLflow run %s (%s) of an interrupted run not closed: %s", run_id, what, str(exc).splitlines()[0])
        return
    log.warning("%s: MLflow run %s of an interrupted workflow run marked KILLED", what, run_id)
