"""Data-pipeline benchmark for ``bench.run``: the Ray Data preprocessing pipeline (read shards, decode,
transform, template, tokenise, pad on CPU actors) against the single-process floor on the same shards
(``shards.iter_samples`` + ``preprocess_rows`` in one Python process), as samples/s and per-core efficiency."""

from __future__ import annotations

import logging
import os
import time
from itertools import islice
from typing import Any

from deco_core.config import Config
from deco_core.data.ray_data import PreprocessSpec, build_dataset, preprocess_rows, stack_rows
from deco_core.data.shards import iter_samples

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask), the hardware the Ray pipeline shares."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def single_process_floor(uri: str, spec: PreprocessSpec, cfg: Config, batch_size: int) -> dict[str, float]:
    """Read and preprocess every sample of ``uri`` in this process, stacking batches as the actors do."""
    start = time.perf_counter()
    samples = iter(iter_samples(uri, cfg.data.storage))
    n = 0
    while chunk := list(islice(samples, batch_size)):
        rows, _ = preprocess_rows(chunk, spec)
        n += len(stack_rows(rows).get("input_ids", ()))
    seconds = time.perf_counter() - start
    log.info("(c) single process: %d samples in %.2fs (%.1f samples/s)", n, seconds, n / seconds)
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds}


def ray_data_pipeline(uri: str, spec: PreprocessSpec, cfg: Config, batch_size: int, tasks: bool) -> dict[str, float]:
    """Build the training dataset over ``uri`` (Ray must be initialised) and drain it with ``iter_batches``:
    preprocessing as Ray tasks (``tasks``: the preprocess-ahead path) or on the streaming actor pool.

    Reported: overall samples/s (from dataset creation, so process start-up is included) and the steady-state
    rate after the first batch arrived.
    """
    start = time.perf_counter()
    ds, _ = build_dataset([(uri, 1.0)], spec, cfg.data.storage, None, cfg.data.preprocess_batch_size,
                          cfg.data.preprocess_cpus, shuffle=False, tasks=tasks)
    n = first_n = 0
    first_at = None
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
        n += len(batch["input_ids"])
        if first_at is None:
            first_at, first_n = time.perf_counter(), n
    end = time.perf_counter()
    if first_at is None:
        raise RuntimeError(f"(c) Ray Data yielded no batch from {uri}")
    seconds = end - start
    steady = (n - first_n) / max(end - first_at, 1e-9)
    log.info("(c) Ray Data (%s): %d samples in %.2fs (%.1f samples/s; %.1f after the first batch)",
             "tasks" if tasks else "actor pool", n, seconds, n / seconds, steady)
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds, "first_batch_s": first_at - start,
            "steady_samples_per_s": steady, "path": "tasks" if tasks else "actor_pool"}


def bench_data_pipeline(uri: str, spec: PreprocessSpec, cfg: Config, batch_size: int) -> dict[str, Any]:
    """(c) Ray Data vs the single-process floor; Ray must already be initialised (local)."""
    single = single_process_floor(uri, spec, cfg, batch_size)
    # the path the configuration trains with; the streaming actor pool (data.preprocess_ahead=false) beside it
    ray_res = ray_data_pipeline(uri, spec, cfg, batch_size, tasks=cfg.data.preprocess_ahead)
    other = ray_data_pipeline(uri, spec, cfg, batch_size, tasks=not cfg.data.preprocess_ahead)
    if ray_res["samples"] != single["samples"]:
        raise RuntimeError(f"(c) sample counts differ: Ray Data {ray_res['samples']}, single process "
                           f"{single['samples']} over {uri}")
    cores = available_cores()
    return {
        "single_process": single, "ray_data": ray_res, "cores": cores,
        ("ray_data_actor_pool" if cfg.data.preprocess_ahead else "ray_data_tasks"): other,
        "ray_logical_cpus": float(cfg.ray.num_cpus or cores), "preprocess_cpus_per_actor": cfg.data.preprocess_cpus,
        "speedup": ray_res["samples_per_s"] / single["samples_per_s"],
        "steady_speedup": ray_res["steady_samples_per_s"] / single["samples_per_s"],
        "per_core_efficiency": ray_res["samples_per_s"] / cores / single["samples_per_s"],
        "steady_per_core_efficiency": ray_res["steady_samples_per_s"] / cores / single["samples_per_s"],
    }
