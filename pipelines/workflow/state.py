"""The workflow's state file, ``<root>/workflow/state.json`` (local or S3): per-stage records and the current
workflow run, written atomically.

A record's ``status`` is running, completed, failed or interrupted for a stage this workflow ran, or
``external`` for a stage whose outputs a caller supplied instead of running it (retraining's champion in place of
pretrain): an external record satisfies its dependents like a completed one but is never a cached result."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from deco_core.data.storage import StorageConfig, get_filesystem, join_uri
from pipelines.workflow.liveness import Owner

#: The status of a record whose outputs were supplied by the caller, not produced by running the stage.
EXTERNAL = "external"


class StateStore:
    """``<root>/workflow/state.json``: ``stages``: stage -> {fingerprint, status, outputs, times, run ids, owner,
    heartbeat}; ``workflow``: the current (or last) run's parent MLflow run, owner and end. Writes from one process
    (the run and its heartbeat thread) are serialised; the root lock keeps other processes out."""

    def __init__(self, root: str, storage: StorageConfig | None = None) -> None:
        self.uri = join_uri(root, "workflow", "state.json")
        self.fs, self.path = get_filesystem(self.uri, storage)
        self.mutex = threading.RLock()

    def load(self) -> dict[str, Any]:
        if not self.fs.exists(self.path):
            return {"stages": {}}
        with self.fs.open(self.path, "r") as f:
            return json.load(f)

    def save(self, state: dict[str, Any]) -> None:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        tmp = self.path + ".tmp"
        with self.fs.open(tmp, "w") as f:
            json.dump(state, f, indent=2, default=str)
        self.fs.mv(tmp, self.path)

    def update(self, stage: str, **fields: Any) -> dict[str, Any]:
        with self.mutex:
            state = self.load()
            state["stages"].setdefault(stage, {}).update(fields)
            self.save(state)
            return state

    def replace(self, stage: str, record: dict[str, Any]) -> None:
        """A fresh record for ``stage``: nothing of an earlier run's (outputs, times) is kept."""
        with self.mutex:
            state = self.load()
            state["stages"][stage] = record
            self.save(state)

    def set_external(self, stage: str, fingerprint: str, outputs: dict[str, Any]) -> None:
        """Record ``outputs`` as supplied from outside for ``stage`` (status ``external``), replacing its record."""
        self.replace(stage, {"status": EXTERNAL, "fingerprint": fingerprint, "outputs": dict(outputs),
                             "finished": time.time()})

    def set_workflow(self, **fields: Any) -> None:
        with self.mutex:
            state = self.load()
            state.setdefault("workflow", {}).update(fields)
            self.save(state)

    def beat(self, owner: Owner) -> None:
        """Refresh the heartbeat of every running record ``owner`` holds."""
        with self.mutex:
            state = self.load()
            mine = [r for r in state["stages"].values()
                    if r.get("status") == "running" and owner.same_process(Owner.from_dict(r.get("owner")))]
            for rec in mine:
                rec["heartbeat"] = time.time()
            if mine:
                self.save(state)


__all__ = ["EXTERNAL", "StateStore"]
