"""The workflow's state file, ``<root>/workflow/state.json`` (local or S3): per-stage records and the current
workflow run, written atomically."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from deco_core.data.storage import get_filesystem, join_uri
from pipelines.liveness import Owner


class StateStore:
    """``<root>/workflow/state.json``: ``stages``: stage -> {fingerprint, status, outputs, times, run ids, owner,
    heartbeat}; ``workflow``: the current (or last) run's parent MLflow run, owner and end. Writes from one process
    (the run and its heartbeat thread) are serialised; the root lock keeps other processes out."""

    def __init__(self, root: str, storage=None) -> None:
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


__all__ = ["StateStore"]
