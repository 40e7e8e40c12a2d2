"""Trainer benchmark for ``pipelines.bench``: one short ``run_stage`` (Ray Train + DeepSpeed, logging every step)
read back from MLflow for the data-wait fraction, throughput and cold start (stage call -> first logged step),
while a sampler thread records the peak RSS of every Ray worker process descended from this process
(psutil, every 0.2 s; workers of a remote cluster are not visible and make the benchmark fail loudly)."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deco_core.config import Config

log = logging.getLogger(__name__)
# Process title substring -> worker kind (Ray sets titles such as "ray::RayTrainWorker.__init__").
# fmt: off
WORKER_KINDS = {
    "RayTrainWorker": "train_worker",
    "MapWorker":      "data_actor",
}
# fmt: on


@dataclass
class RssSampler:
    """Background sampling of peak RSS per Ray worker process (descendants of this process only)."""

    interval_s: float = 0.2
    peaks: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid -> (kind, peak rss bytes)
    first_seen: dict[str, float] = field(default_factory=dict)  # kind -> time.time() first seen
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._loop, name="bench-rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            for proc in me.children(recursive=True):
                try:
                    title = " ".join(proc.cmdline())
                    kind = next((k for s, k in WORKER_KINDS.items() if s in title), None)
                    if kind is None:
                        continue
                    rss = proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                self.first_seen.setdefault(kind, time.time())
                old = self.peaks.get(proc.pid, (kind, 0))[1]
                self.peaks[proc.pid] = (kind, max(old, rss))
            self._stop.wait(self.interval_s)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per kind: worker count, max and mean of the per-process peak RSS in MiB."""
        out: dict[str, dict[str, float]] = {}
        for kind in sorted(set(WORKER_KINDS.values())):
            peaks = [rss / 2**20 for k, rss in self.peaks.values() if k == kind]
            if not peaks:
                raise RuntimeError(f"RSS sampler saw no {kind} process among this process's descendants "
                                   "(a remote Ray cluster cannot be sampled from here)")
            out[kind] = {"processes": float(len(peaks)), "peak_rss_mb_max": max(peaks),
                         "peak_rss_mb_mean": statistics.fmean(peaks)}
        return out


def _history(client, run_id: str, key: str) -> list[tuple[int, float, float]]:
    """(step, value, timestamp s) sorted by step."""
    hist = client.get_metric_history(run_id, key)
    if not hist:
        raise RuntimeError(f"MLflow run {run_id} has no metric {key!r}")
    return sorted((m.step, m.value, m.timestamp / 1000.0) for m in hist)


def _steady(values: list[tuple[int, float, float]]) -> float:
    """Mean over logged steps after the first (the first step pays the pipeline warm-up)."""
    rest = [v for s, v, _ in values[1:]] or [values[0][1]]
    return statistics.fmean(rest)


def bench_trainer(cfg: Config, source_uri: str, out_dir: Path, parent_run_id: str | None) -> dict[str, Any]:
    """(d) data-wait fraction, (f) cold start and (g) per-worker peak RSS from one short finetune-policy stage."""
    from mlflow import MlflowClient

    from deco_core.train.trainer import run_stage

    stage = "finetune"
    t = cfg.finetune
    if t.log_every != 1 or t.init_from:
        raise ValueError("bench_trainer: needs finetune.log_every=1 and no finetune.init_from (a fresh model)")
    run_name = f"bench-{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    sampler = RssSampler().start()
    called = time.time()
    try:
        result = run_stage(cfg, stage, sources=[(source_uri, 1.0)], output_uri=str(out_dir / "model" / run_name),
                           run_name=run_name, storage_path=str(out_dir / "ray"), parent_run_id=parent_run_id)
    finally:
        sampler.stop()
    client = MlflowClient(cfg.tracking.tracking_uri)
    loss = _history(client, result.run_id, "train/loss")
    wait = _history(client, result.run_id, "train/data_wait_frac")
    step_time = _history(client, result.run_id, "train/step_time_s")
    sps = _history(client, result.run_id, "train/samples_per_s")
    first_step_at = loss[0][2]
    workers_up = sampler.first_seen.get("train_worker", first_step_at)
    log.info("(d) data wait %.1f%% (steady %.1f%%); (f) cold start %.1fs", 100 * statistics.fmean(v for _, v, _ in wait),
             100 * _steady(wait), first_step_at - called)
    return {
        "run_id": result.run_id, "steps": result.steps, "wall_s": result.wall_s,
        "data_wait": {"mean_frac": statistics.fmean(v for _, v, _ in wait), "steady_frac": _steady(wait),
                      "first_step_frac": wait[0][1]},
        "throughput": {"steady_samples_per_s": _steady(sps), "steady_step_s": _steady(step_time)},
        "cold_start": {"to_first_step_s": first_step_at - called, "first_step_s": step_time[0][1],
                       "to_train_workers_s": workers_up - called, "workers_to_first_step_s": first_step_at - workers_up,
                       "first_loss": loss[0][1], "last_loss": loss[-1][1]},
        "memory": sampler.summary(),
    }
