"""The stage DAG: prepare_data → pretrain → finetune → evaluate → analyze → register.

Each stage's fingerprint hashes the config sections it reads, its upstream stages' fingerprints and the code
version. A stage whose fingerprint matches a completed record in ``<root>/workflow/state.json`` (written
atomically, local or S3) is skipped; a failed or interrupted run restarts at the first incomplete stage, and a
config change reruns that stage and everything downstream, nothing upstream. One MLflow parent run per
workflow run; one nested run per executed stage; stage states and outputs as tags on the parent. A submitted
workflow (pipelines.ops.submit) passes its parent run in: each job's stages nest under it, and the submitter
ends it. A caller may supply a stage's outputs instead of running it (``external``: a record "external").
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from deco_core.config import Config
from deco_core.tracking import get_or_create_run, log_headline_metrics, log_key_settings, resolve_tracking_uri
from pipelines.ops.runtime import ensure_ray
from pipelines.workflow.context import StageContext, StageReport
from pipelines.workflow.dag import RAY_STAGES, stage_table
from pipelines.workflow.fingerprint import code_version, fingerprints
from pipelines.workflow.liveness import Heartbeat, Owner, owner_alive
from pipelines.workflow.lock import RootLock
from pipelines.workflow.probe import probe_services
from pipelines.workflow.recovery import recover_interrupted
from pipelines.workflow.state import EXTERNAL, StateStore
from pipelines.workflow.summary import write_summary

log = logging.getLogger(__name__)


class Workflow:
    """Runs the DAG (all stages, or a selection whose inputs are already complete).

    ``parent_run_id``: an existing MLflow parent run (the submitter's) to nest the stage runs under, instead of a
    new one; it is marked FAILED when a stage fails and ended only with ``end_parent``. ``stage_tags`` are set on
    every stage run this workflow executes (a submitted job's Ray job id). ``external``: stage -> outputs supplied
    by the caller; those stages are not run, their records say "external", and their dependents read the outputs.
    """

    def __init__(self, cfg: Config, parent_run_id: str | None = None, stage_tags: dict[str, str] | None = None,
                 end_parent: bool = False, external: dict[str, dict[str, Any]] | None = None) -> None:
        self.cfg = cfg
        self.parent_run_id, self.stage_tags, self.end_parent = parent_run_id, dict(stage_tags or {}), end_parent
        self.stages = {k: v for k, v in stage_table().items() if k in cfg.pipeline.stages}
        self.external = {k: dict(v) for k, v in (external or {}).items()}
        unknown = set(self.external) - set(self.stages)
        if unknown:
            raise KeyError(f"external stage(s) {sorted(unknown)} not among this pipeline's stages {list(self.stages)}")
        self.fps = fingerprints(cfg, self.stages)
        self.store = StateStore(cfg.pipeline.root, cfg.data.storage)
        self.tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.pipeline.root)

    def status(self) -> list[dict[str, Any]]:
        """One row per stage: state (done / stale / failed / running / interrupted / pending), fingerprint and
        outputs (a completed or external record's only). A running record whose owner is gone reads "interrupted";
        a record supplied by a caller reads "external"."""
        state = self.load_state()
        rows = []
        for name in self.stages:
            rec = state["stages"].get(name, {})
            status = rec.get("status", "pending")
            if status == "completed":
                status = "done" if rec.get("fingerprint") == self.fps[name] else "stale"
            elif status == EXTERNAL and rec.get("fingerprint") != self.fps[name]:
                status = "stale"
            elif status == "running" and not owner_alive(Owner.from_dict(rec.get("owner")), rec.get("heartbeat")):
                status = "interrupted"
            rows.append({"stage": name, "status": status, "fingerprint": self.fps[name][:10],
                         "outputs": rec.get("outputs", {}) if rec.get("status") in ("completed", EXTERNAL) else {},
                         "finished": rec.get("finished")})
        return rows

    def load_state(self) -> dict[str, Any]:
        return self.store.load()

    def is_done(self, name: str, state: dict[str, Any]) -> bool:
        """A completed record with the current fingerprint: the stage's cached result."""
        rec = state["stages"].get(name, {})
        return rec.get("status") == "completed" and rec.get("fingerprint") == self.fps[name]

    def is_satisfied(self, name: str, state: dict[str, Any]) -> bool:
        """Done, or supplied by this run's caller: a dependency its dependents may read."""
        rec = state["stages"].get(name, {})
        external = name in self.external and rec.get("status") == EXTERNAL
        return self.is_done(name, state) or (external and rec.get("fingerprint") == self.fps[name])

    def run(self, only: list[str] | None = None, force: bool = False) -> list[StageReport]:
        """Run stages in order; skip completed ones unless ``force``; returns one report per stage.

        First every configured service is probed (probe.ServiceUnreachable) and the root's run lock taken
        (lock.RootLocked); what a run that is gone left running is marked interrupted (MLflow: KILLED); a
        heartbeat thread refreshes the lock and the running stage's record until the run ends."""
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
            ensure_ray(self.cfg)  # one Ray instance for the whole workflow, started before any stage's clock
        parent = self.parent_run_id or get_or_create_run(
            self.tracking_uri, self.cfg.tracking.experiment,
            f"{self.cfg.pipeline.name}-workflow-{int(time.time())}-{uuid.uuid4().hex[:6]}", self.cfg.pipeline.root,
            tags={"deco.kind": "workflow", "deco.code_version": code_version()})
        self.store.set_workflow(parent_run_id=parent, owner=self.owner.to_dict(), started=started_at, finished=None,
                                status="running")
        log_key_settings(self._client(), parent, self.cfg)
        for name, outputs in self.external.items():
            self.store.set_external(name, self.fps[name], outputs)
        reports: list[StageReport] = []
        ok = False
        try:
            self._warm_start(selected, force)
            for i, name in enumerate(selected):
                report = self._run_one(name, parent, force, tuple(selected[i + 1:]))
                reports.append(report)
                self._tag_parent(parent, report)
                if report.status == "failed":
                    break
            ok = not any(r.status == "failed" for r in reports)
        finally:
            from deco_core.train.session import close_sessions

            close_sessions(force=not ok)  # a failed run's session is closed even where a caller holds sessions
            if not ok or self.parent_run_id is None or self.end_parent:
                self._client().set_terminated(parent, "FINISHED" if ok else "FAILED")
            self.store.set_workflow(status="finished" if ok else "failed", finished=time.time())
        write_summary(self.cfg, reports, time.perf_counter() - t0, started_at)
        return reports

    def _warm_start(self, selected: list[str], force: bool) -> None:
        """Let the first stage of this run that has a warm start begin it now, when another stage runs before it
        (the training stages start their worker group while prepare_data writes the shards). A warm start that
        fails is logged and left to the stage itself to report."""
        state = self.load_state()
        to_run = [s for s in selected if s not in self.external and (force or not self.is_done(s, state))]
        first = next((i for i, s in enumerate(to_run) if self.stages[s].warm is not None), None)
        if not first:  # none, or it runs first: nothing to overlap
            return
        name = to_run[first]
        log.info("stage %-12s warm start while %s run%s first", name, ", ".join(to_run[:first]),
                 "s" if first == 1 else "")
        try:
            self.stages[name].warm(self.cfg)  # type: ignore[misc]
        except Exception:
            log.warning("stage %s: warm start failed; the stage starts its own work when it runs", name,
                        exc_info=True)

    def _client(self) -> Any:
        """An MlflowClient on the workflow's store (mlflow is imported on first use)."""
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    def _tag_parent(self, parent: str, report: StageReport) -> None:
        client = self._client()
        client.set_tag(parent, f"stage.{report.name}.status", report.status)
        log_headline_metrics(client, parent, report.name, report.outputs)
        for key, value in report.outputs.items():
            if isinstance(value, str | int | float):
                client.set_tag(parent, f"stage.{report.name}.{key}", str(value)[:5000])

    def _run_one(self, name: str, parent: str, force: bool, later: tuple[str, ...] = ()) -> StageReport:
        spec = self.stages[name]
        state = self.load_state()
        if name in self.external:
            log.info("stage %-12s external (outputs supplied by the caller)", name)
            return StageReport(name, EXTERNAL, dict(self.external[name]))
        if not force and self.is_done(name, state):
            log.info("stage %-12s skipped (fingerprint %s already completed)", name, self.fps[name][:10])
            return StageReport(name, "skipped", state["stages"][name].get("outputs", {}))
        missing = [d for d in spec.deps if d in self.stages and not self.is_satisfied(d, state)]
        if missing:
            raise RuntimeError(f"stage {name} needs completed upstream stage(s) {missing} with the current config; "
                               "run them first (deco pipeline run --stages ...)")
        run_name = f"{self.cfg.pipeline.name}-{name}-{self.fps[name][:10]}"
        run_id = get_or_create_run(self.tracking_uri, self.cfg.tracking.experiment, run_name, self.cfg.pipeline.root,
                                   parent_run_id=parent, tags={"deco.stage": name})
        for key, value in self.stage_tags.items():  # also on a resumed run
            self._client().set_tag(run_id, key, value)
        inputs = {d: state["stages"][d].get("outputs", {}) for d in spec.deps if d in state["stages"]}
        ctx = StageContext(self.cfg, name, self.fps[name], inputs, run_name, run_id, parent, self.tracking_uri, later)
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
