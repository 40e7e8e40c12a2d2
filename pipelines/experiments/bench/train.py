"""Trainer benchmarks for ``bench.run``: short ``run_stage`` calls (Ray Train + DeepSpeed, logging every
step) read back from MLflow for the steady step time, data-wait fraction, phase breakdown and cold start; the
same stage step in one plain process (the floor); and a sampler thread recording the peak RSS of every Ray
worker process descended from this process (psutil, every 0.2 s; workers of a remote cluster are not visible
and make the benchmark fail loudly)."""

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
# Kinds every trainer benchmark must see; data actors exist only when preprocessing streams beside training
# (``data.preprocess_ahead: false``); ahead of training it runs as Ray tasks in short-lived workers.
REQUIRED_KINDS = ("train_worker",)


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
        """Per kind seen: worker count, max and mean of the per-process peak RSS in MiB."""
        out: dict[str, dict[str, float]] = {}
        for kind in sorted(set(WORKER_KINDS.values())):
            peaks = [rss / 2**20 for k, rss in self.peaks.values() if k == kind]
            if not peaks and kind not in REQUIRED_KINDS:
                continue
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


def _steady(values: list[tuple[int, float, float]], skip: int = 1) -> float:
    """Median over logged steps after the first ``skip`` (the first steps pay the pipeline warm-up)."""
    rest = [v for s, v, _ in values[skip:]] or [values[-1][1]]
    return statistics.median(rest)


def bench_stage(cfg: Config, stage: str, source_uri: str, out_dir: Path, parent_run_id: str | None,
                label: str | None = None, session: str | None = None) -> dict[str, Any]:
    """One short training stage through ``run_stage`` (logging every step), read back from MLflow: steady step
    time, data wait, throughput, phase breakdown and the fixed cost (wall time − steps × steady step time).
    ``session``: run it in that training session (opened by the first stage that names it)."""
    from mlflow import MlflowClient

    from deco_core.train.loop import torch_threads
    from deco_core.train.trainer import run_stage

    t = getattr(cfg, stage)
    if t.log_every != 1 or t.init_from:
        raise ValueError(f"bench_stage: needs {stage}.log_every=1 and no {stage}.init_from (a fresh model)")
    run_name = f"bench-{label or stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    sampler = RssSampler().start()
    called = time.time()
    try:
        result = run_stage(cfg, stage, sources=[(source_uri, 1.0)], output_uri=str(out_dir / "model" / run_name),
                           run_name=run_name, storage_path=str(out_dir / "ray"), parent_run_id=parent_run_id,
                           session=session)
    finally:
        sampler.stop()
    client = MlflowClient(cfg.tracking.tracking_uri)
    loss = _history(client, result.run_id, "train/loss")
    wait = _history(client, result.run_id, "train/data_wait_frac")
    step_time = _history(client, result.run_id, "train/step_time_s")
    sps = _history(client, result.run_id, "train/samples_per_s")
    steady_step = _steady(step_time, skip=2)
    first_step_at = loss[0][2]
    workers_up = sampler.first_seen.get("train_worker", first_step_at)
    fixed = result.wall_s - result.steps * steady_step
    log.info("%s: %d steps, steady step %.3fs, wall %.1fs, fixed %.1fs; phases %s", label or stage, result.steps,
             steady_step, result.wall_s, fixed, result.phases)
    return {
        "run_id": result.run_id, "steps": result.steps, "wall_s": result.wall_s, "fixed_s": fixed,
        "layout": {"workers": t.num_workers, "threads_per_worker": torch_threads(t, t.num_workers),
                   "micro_batch": t.micro_batch_size, "global_batch": t.global_batch_size, "zero": t.deepspeed},
        "phases": result.phases,
        "data_wait": {"mean_frac": statistics.fmean(v for _, v, _ in wait), "steady_frac": _steady(wait, 2),
                      "first_step_frac": wait[0][1]},
        "throughput": {"steady_samples_per_s": _steady(sps, 2), "steady_step_s": steady_step},
        "cold_start": {"to_first_step_s": first_step_at - called, "first_step_s": step_time[0][1],
                       "to_train_workers_s": workers_up - called, "workers_to_first_step_s": first_step_at - workers_up,
                       "first_loss": loss[0][1], "last_loss": loss[-1][1]},
        "memory": sampler.summary(),
    }


def plain_step_times(cfg: Config, stage: str, tokenizer: Any, batch: dict[str, Any], steps: int, threads: int,
                     warmup: int = 2) -> list[float]:
    """Seconds per optimizer step of the same stage model (same freeze policy), AdamW and gradient clipping on
    one ``batch`` of the stage's global size, in this process with ``threads`` torch threads — the floor a
    distributed step is compared with."""
    import torch

    from deco_core.train.loop import build_stage_model
    from deco_core.train.schedule import param_groups

    t = getattr(cfg, stage)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_stage_model(cfg, stage, tokenizer).train()
        opt = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=tuple(t.betas))
        params = [p for p in model.parameters() if p.requires_grad]
        times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return times
    finally:
        torch.set_num_threads(previous)
