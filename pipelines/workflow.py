"""The stage DAG: prepare_data → pretrain → finetune → evaluate → analyze → register.

Each stage's fingerprint hashes the config sections it reads, its upstream stages' fingerprints and the code
version. A stage whose fingerprint matches a completed record in ``<root>/workflow/state.json`` (written
atomically, local or S3) is skipped; a failed or interrupted run restarts at the first incomplete stage, and a
config change reruns that stage and everything downstream, nothing upstream. One MLflow parent run per
workflow run; one nested run per executed stage; stage states and outputs as tags on the parent. A submitted
workflow (pipelines.submit) passes its parent run in: each job's stages nest under it, and the submitter ends it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from deco_core.config import Config, to_dict
from deco_core.data.storage import join_uri
from deco_core.tracking import get_or_create_run, log_headline_metrics, log_key_settings, resolve_tracking_uri
from pipelines.liveness import Heartbeat, Owner, owner_alive
from pipelines.lock import RootLock
from pipelines.recovery import recover_interrupted
from pipelines.state import StateStore

log = logging.getLogger(__name__)
PACKAGE_DIRS = ("deco_core", "pipelines")
RAY_STAGES = ("pretrain", "finetune", "evaluate")  # stages that run on Ray


@dataclass
class StageContext:
    """What a stage function receives."""

    cfg: Config
    name: str
    fingerprint: str
    inputs: dict[str, dict[str, Any]]  # upstream stage -> its outputs
    run_name: str
    run_id: str | None
    parent_run_id: str | None
    tracking_uri: str | None

    @property
    def root(self) -> str:
        return self.cfg.pipeline.root

    def out_uri(self, *parts: str) -> str:
        """``<root>/<stage>/<fingerprint[:10]>/...``: outputs of different configs never collide."""
        return join_uri(self.root, self.name, self.fingerprint[:10], *parts)


@dataclass(frozen=True)
class StageSpec:
    run: Callable[[StageContext], dict[str, Any]]
    deps: tuple[str, ...]
    config_keys: tuple[str, ...]
    description: str


def _stage_table() -> dict[str, StageSpec]:
    from pipelines.stages import analyze, evaluate, finetune, prepare_data, pretrain, register

    # fmt: off
    return {
        "prepare_data": StageSpec(prepare_data.run, (), ("data",), "ShapesWorld / converted shards + manifests"),
        "pretrain": StageSpec(pretrain.run, ("prepare_data",), ("model", "pretrain"), "alignment on captions"),
        "finetune": StageSpec(finetune.run, ("prepare_data", "pretrain"), ("finetune",), "instruction tuning"),
        "evaluate": StageSpec(evaluate.run, ("finetune",), ("eval",), "benchmarks on a frozen eval set"),
        "analyze": StageSpec(analyze.run, ("finetune",), ("analysis",), "R-GAE relevance + locality"),
        "register": StageSpec(register.run, ("finetune", "evaluate"), ("tracking.registered_model",),
                              "MLflow registry, alias challenger"),
    }
    # fmt: on


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of our source files: a code change invalidates cached stage outputs."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for pkg in PACKAGE_DIRS:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _select(cfg_dict: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg_dict
    for part in dotted.split("."):
        node = node[part]
    return node


def fingerprints(cfg: Config, stages: dict[str, StageSpec]) -> dict[str, str]:
    """Stage -> sha256 of (its config sections, upstream fingerprints, code version)."""
    data = to_dict(cfg)
    out: dict[str, str] = {}
    for name, spec in stages.items():  # table order is topological
        payload = {"stage": name, "config": {k: _select(data, k) for k in spec.config_keys},
                   "deps": {d: out[d] for d in spec.deps if d in out}, "code": code_version()}
        out[name] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return out


@dataclass
class StageReport:
    name: str
    status: str  # completed | skipped | failed | blocked
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    run_id: str | None = None


class Workflow:
    """Runs the DAG (all stages, or a selection whose inputs are already complete).

    ``parent_run_id``: an existing MLflow parent run (the submitter's) to nest the stage runs under, instead of a
    new one; it is marked FAILED when a stage fails and ended only with ``end_parent``. ``stage_tags`` are set on
    every stage run this workflow executes (a submitted job's Ray job id).
    """

    def __init__(self, cfg: Config, parent_run_id: str | None = None, stage_tags: dict[str, str] | None = None,
                 end_parent: bool = False) -> None:
        self.cfg = cfg
        self.parent_run_id, self.stage_tags, self.end_parent = parent_run_id, dict(stage_tags or {}), end_parent
        self.stages = {k: v for k, v in _stage_table().items() if k in cfg.pipeline.stages}
        self.fps = fingerprints(cfg, self.stages)
        self.store = StateStore(cfg.pipeline.root, cfg.data.storage)
        self.tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.pipeline.root)

    def status(self) -> list[dict[str, Any]]:
        """One row per stage: state (done / stale / failed / running / interrupted / pending), fingerprint and
        outputs (a completed record's only). A running record whose owner is gone reads "interrupted"."""
        state = self.load_state()
        rows = []
        for name in self.stages:
            rec = state["stages"].get(name, {})
            status = rec.get("status", "pending")
            if status == "completed":
                status = "done" if rec.get("fingerprint") == self.fps[name] else "stale"
            elif status == "running" and not owner_alive(Owner.from_dict(rec.get("owner")), rec.get("heartbeat")):
                status = "interrupted"
            rows.append({"stage": name, "status": status, "fingerprint": self.fps[name][:10],
                         "outputs": rec.get("outputs", {}) if rec.get("status") == "completed" else {},
                         "finished": rec.get("finished")})
        return rows

    def load_state(self) -> dict[str, Any]:
        return self.store.load()

    def is_done(self, name: str, state: dict[str, Any]) -> bool:
        rec = state["stages"].get(name, {})
        return rec.get("status") == "completed" and rec.get("fingerprint") == self.fps[name]

    def run(self, only: list[str] | None = None, force: bool = False) -> list[StageReport]:
        """Run stages in order; skip completed ones unless ``force``; returns one report per stage.

        First every configured service is probed (probe.ServiceUnreachable) and the root's run lock taken
        (lock.RootLocked); what a run that is gone left running is marked interrupted (MLflow: KILLED); a
        heartbeat thread refreshes the lock and the running stage's record until the run ends."""
        from pipelines.probe import probe_services

        selected = [s for s in self.stages if only is None or s in only]
        unknown = set(only or []) - set(self.stages)
        if unknown:
            raise KeyError(f"unknown stage(s) {sorted(unknown)}; valid: {', '.join(self.stages)}")
        probe_services(self.cfg, self.tracking_uri)
        with RootLock(self.cfg.pipeline.root, self.cfg.data.storage) as lock:
            self.owner = lock.owner
            heartbeat = Heartbeat(lambda: self._beat(lock)).start()
            try:
                recover_interrupted(self.store, self.owner, self._client())
                return self._run_locked(selected, force)
            finally:
                heartbeat.stop()

    def _beat(self, lock: RootLock) -> None:
        lock.refresh()
        self.store.beat(lock.owner)

    def _run_locked(self, selected: list[str], force: bool) -> list[StageReport]:
        started_at, t0 = time.time(), time.perf_counter()
        if any(s in RAY_STAGES for s in selected):
            from pipelines.runtime import ensure_ray

            ensure_ray(self.cfg)  # one Ray instance for the whole workflow, started before any stage's clock
        parent = self.parent_run_id or get_or_create_run(
            self.tracking_uri, self.cfg.tracking.experiment,
            f"{self.cfg.pipeline.name}-workflow-{int(time.time())}-{uuid.uuid4().hex[:6]}", self.cfg.pipeline.root,
            tags={"deco.kind": "workflow", "deco.code_version": code_version()})
        self.store.set_workflow(parent_run_id=parent, owner=self.owner.to_dict(), started=started_at, finished=None,
                                status="running")
        log_key_settings(self._client(), parent, self.cfg)
        reports: list[StageReport] = []
        ok = False
        try:
            for name in selected:
                report = self._run_one(name, parent, force)
                reports.append(report)
                self._tag_parent(parent, report)
                if report.status == "failed":
                    break
            ok = not any(r.status == "failed" for r in reports)
        finally:
            if not ok or self.parent_run_id is None or self.end_parent:
                self._client().set_terminated(parent, "FINISHED" if ok else "FAILED")
            self.store.set_workflow(status="finished" if ok else "failed", finished=time.time())
        from pipelines.summary import write_summary

        write_summary(self.cfg, reports, time.perf_counter() - t0, started_at)
        return reports

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    def _tag_parent(self, parent: str, report: StageReport) -> None:
        client = self._client()
        client.set_tag(parent, f"stage.{report.name}.status", report.status)
        log_headline_metrics(client, parent, report.name, report.outputs)
        for key, value in report.outputs.items():
            if isinstance(value, str | int | float):
                client.set_tag(parent, f"stage.{report.name}.{key}", str(value)[:5000])

    def _run_one(self, name: str, parent: str, force: bool) -> StageReport:
        spec = self.stages[name]
        state = self.load_state()
        if not force and self.is_done(name, state):
            log.info("stage %-12s skipped (fingerprint %s already completed)", name, self.fps[name][:10])
            return StageReport(name, "skipped", state["stages"][name].get("outputs", {}))
        missing = [d for d in spec.deps if d in self.stages and not self.is_done(d, state)]
        if missing:
            raise RuntimeError(f"stage {name} needs completed upstream stage(s) {missing} with the current config; "
                               "run them first (deco pipeline run --stages ...)")
        run_name = f"{self.cfg.pipeline.name}-{name}-{self.fps[name][:10]}"
        run_id = get_or_create_run(self.tracking_uri, self.cfg.tracking.experiment, run_name, self.cfg.pipeline.root,
                                   parent_run_id=parent, tags={"deco.stage": name})
        for key, value in self.stage_tags.items():  # also on a resumed run
            self._client().set_tag(run_id, key, value)
        inputs = {d: state["stages"][d].get("outputs", {}) for d in spec.deps if d in state["stages"]}
        ctx = StageContext(self.cfg, name, self.fps[name], inputs, run_name, run_id, parent, self.tracking_uri)
        now = time.time()
        self.store.replace(name, {"status": "running", "fingerprint": self.fps[name], "started": now,
                                  "heartbeat": now, "run_id": run_id, "parent_run_id": parent,
                                  "owner": self.owner.to_dict()})
        log.info("stage %-12s running (%s)", name, spec.description)
        started = time.perf_counter()
        try:
            outputs = spec.run(ctx)
        except BaseException:
            self.store.update(name, status="failed", finished=time.time())
            self._client().set_terminated(run_id, "FAILED")
            log.exception("stage %s failed", name)
            raise
        seconds = time.perf_counter() - started
        self.store.update(name, status="completed", outputs=outputs, finished=time.time(), seconds=seconds)
        client = self._client()
        client.set_tag(run_id, "deco.status", "completed")
        if client.get_run(run_id).info.status != "FINISHED":
            client.set_terminated(run_id, "FINISHED")
        log.info("stage %-12s completed in %.1fs", name, seconds)
        return StageReport(name, "completed", outputs, seconds, run_id)
