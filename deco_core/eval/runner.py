"""Evaluation orchestration: frozen ShapesWorld eval shards, then per task generate -> score -> worst cases,
then group averages, the report, and MLflow logging (`eval/<task>/<metric>`, `eval/group/<group>`, artifacts).

Needs a running Ray (``ray.init`` by the caller: the CLI, the pipeline stage or a test fixture).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from deco_core.config import EvalConfig, TrackingConfig, to_dict
from deco_core.data.shards import iter_samples, read_manifest, write_shards
from deco_core.data.storage import StorageConfig, copy_dir, get_filesystem, is_remote, join_uri
from deco_core.eval.generate import run_generation_tasks
from deco_core.eval.report import WorstCase, write_report
from deco_core.eval.tasks import TASKS, get_task, group_scores
from deco_core.eval.views import log_views

logger = logging.getLogger(__name__)

POPE_BLOCK = 6  # POPE eval samples come in balanced blocks of 6 per image (3 splits x yes/no)


def shapes_tasks() -> list[str]:
    """The registered tasks whose data ShapesWorld generates."""
    return [name for name, t in TASKS.items() if t.shapes_stream]


def eval_set_fingerprint(n: int, seed: int, shapes: Any, split: str = "val") -> str:
    """Digest of everything that shapes a ShapesWorld eval set (size, seed, split, the generator config and the
    generator code): a changed image size, object setting or box grid never reuses a stale cached set."""
    import dataclasses
    import hashlib

    import deco_core.data.shapes_eval as gen_eval
    import deco_core.data.shapes_scene as gen_scene
    import deco_core.data.shapes_text as gen_text

    h = hashlib.sha256(json.dumps({"n": n, "seed": seed, "split": split, "shapes": dataclasses.asdict(shapes)},
                                  sort_keys=True, default=str).encode())
    for module in (gen_eval, gen_scene, gen_text):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


def build_shapes_eval_shards(root_uri: str, n: int, seed: int, tasks: Sequence[str] | None = None,
                             split: str = "val", samples_per_shard: int = 100,
                             storage: StorageConfig | None = None, shapes: Any = None) -> dict[str, str]:
    """Write each ShapesWorld eval split (n questions per task) as shards under `root_uri/<task>`, drawn with the
    ``shapes`` generator config (``data.shapes``; the defaults when None).

    A frozen eval set: the same (n, seed, split, config) always gives byte-identical shards. POPE's n is rounded up
    to a multiple of 6 so that every POPE split stays exactly balanced. Returns {task: shard folder URI}.
    """
    from deco_core.data.shapes import SHAPES_GENERATORS

    uris = {}
    for name in tasks or shapes_tasks():
        stream = get_task(name).shapes_stream
        if stream is None:
            raise ValueError(f"task {name!r} is not a ShapesWorld task; ShapesWorld tasks: {shapes_tasks()}")
        count = n + (-n % POPE_BLOCK) if stream == "pope" else n
        uri = join_uri(root_uri, name)
        generator = SHAPES_GENERATORS[stream][0]
        write_shards(generator(count, seed=seed, split=split, config=shapes), uri, source=f"shapes-{stream}", split=split,
                     samples_per_shard=samples_per_shard, storage=storage, progress=False)
        uris[name] = uri
    return uris


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a predictions parquet file or folder, sorted by question id (Ray does not keep order)."""
    rows = pq.read_table(str(path)).to_pylist()
    return sorted(rows, key=lambda r: (str(r["task"]), str(r["question_id"])))


def _find_images(data_uri: str, cases: list[dict[str, Any]], storage: StorageConfig | None) -> dict[str, bytes]:
    """Image bytes for the given rows' keys, reading only the shards that hold them."""
    wanted = {str(c["key"]) for c in cases}
    shards = {str(c["shard"]) for c in cases if c.get("shard")}
    urls = [u for u in read_manifest(data_uri, storage).shard_urls if not shards or os.path.basename(u) in shards]
    found: dict[str, bytes] = {}
    for url in urls:
        for sample in iter_samples(url, storage):
            if sample["__key__"] in wanted:
                found[sample["__key__"]] = next((sample[k] for k in ("png", "jpg", "jpeg") if k in sample), b"")
        if len(found) == len(wanted):
            break
    return found


def worst_cases(task: str, rows: list[dict[str, Any]], k: int, data_uri: str,
                storage: StorageConfig | None = None) -> list[WorstCase]:
    """The k lowest-scoring rows (ties broken by question id) with their images."""
    if k <= 0 or not rows:
        return []
    chosen = sorted(rows, key=lambda r: (float(r["score"]), str(r["question_id"])))[:k]
    images = _find_images(data_uri, chosen, storage)
    return [WorstCase(task, str(r["question_id"]), str(r["prompt"]), str(r["prediction"]),
                      json.loads(r["references"] or "{}"), float(r["score"]), images.get(str(r["key"])),
                      str(r.get("error") or "")) for r in chosen]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip().lower())


def flat_metrics(task_scores: Mapping[str, Mapping[str, float]], groups: Mapping[str, float]) -> dict[str, float]:
    """MLflow metric keys: eval/<task>/<metric> and eval/group/<group slug> (finite values only)."""
    out = {f"eval/{t}/{m}": float(v) for t, s in task_scores.items() for m, v in s.items()}
    out.update({f"eval/group/{_slug(g)}": float(v) for g, v in groups.items()})
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_to_mlflow(metrics: Mapping[str, float], artifacts: Mapping[str, Path], tracking: TrackingConfig,
                  root: str | Path, params: Mapping[str, Any] | None = None, run_id: str | None = None,
                  views: Callable[[Any, str], None] | None = None) -> str:
    """Log into `run_id`, else the active MLflow run, else a new run "evaluate"; returns the run id.

    Artifacts: {artifact_path: local file or folder}. Params are logged only on a run started here (an existing
    run may already hold params with the same keys). ``views(client, run_id)`` adds figures and tables.
    """
    import mlflow
    from mlflow import MlflowClient

    from deco_core.tracking import ensure_experiment, log_batch, log_path, resolve_tracking_uri

    active = mlflow.active_run()
    if run_id is None and active is not None:
        run_id, uri = active.info.run_id, mlflow.get_tracking_uri()
    elif run_id is not None and not tracking.tracking_uri:
        uri = mlflow.get_tracking_uri()  # the caller's run lives in the process's current store
    else:
        uri = resolve_tracking_uri(tracking, root)
    client = MlflowClient(uri)
    started = run_id is None
    if started:
        exp_id = ensure_experiment(client, tracking.experiment, root)
        run_id = client.create_run(exp_id, run_name="evaluate").info.run_id
        log_batch(client, run_id, params=params or {})
    log_batch(client, run_id, metrics=dict(sorted(metrics.items())))
    for artifact_path, local in artifacts.items():
        log_path(client, run_id, local, artifact_path)
    if views is not None:
        views(client, run_id)
    if started:
        client.set_terminated(run_id)
    logger.info("logged %d eval metrics to MLflow run %s (%s)", len(metrics), run_id, uri)
    return run_id


def blind_scores(task_name: str, rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """The task's metrics over the blind answers (every question shown a blank image); None when not generated."""
    blind = [{**r, "prediction": r["blind_prediction"]} for r in rows
             if r.get("blind_score") is not None and math.isfinite(float(r["blind_score"]))]
    return get_task(task_name).score(blind) if blind else None


def baselines_of(task_scores: Mapping[str, Mapping[str, float]],
                 blind: Mapping[str, Mapping[str, float] | None]) -> dict[str, dict[str, float | None]]:
    """task -> {"blind", "chance"} primary scores shown beside the model's."""
    out = {}
    for name in task_scores:
        task, b = get_task(name), blind.get(name)
        out[name] = {"blind": b[task.primary] if b else None, "chance": task.chance}
    return out


def score_tasks(model_uri: str, tasks: Sequence[str], data_uris: Mapping[str, str], work: Path, cfg: EvalConfig,
                storage: StorageConfig | None, num_gpus: float = 0.0) -> tuple[dict, dict, list[dict[str, Any]]]:
    """Generate answers for all tasks in one actor pool, then score: (task scores, worst cases, all rows).

    With ``cfg.blind_baseline`` each task's scores also hold ``blind/<metric>``: the same metrics when every
    question is answered shown a blank image."""
    task_objs = [get_task(t) for t in tasks]
    gen_dir = work / "generations"
    run_generation_tasks(model_uri, {t.name: data_uris[t.name] for t in task_objs}, str(gen_dir), cfg, storage,
                         num_gpus)
    all_rows = read_predictions(gen_dir)
    task_scores: dict[str, dict[str, float]] = {}
    worst: dict[str, list[WorstCase]] = {}
    for task in task_objs:
        rows = [r for r in all_rows if r["task"] == task.name]
        task_scores[task.name] = task.score(rows)
        task_scores[task.name]["n_errors"] = float(sum(bool(r.get("error")) for r in rows))
        blind = blind_scores(task.name, rows)
        if blind:
            task_scores[task.name].update({f"blind/{k}": v for k, v in blind.items() if k != "n"})
        logger.info("eval %s: %s", task.name, {k: round(v, 4) for k, v in task_scores[task.name].items()})
        worst[task.name] = worst_cases(task.name, rows, cfg.worst_cases, data_uris[task.name], storage)
    return task_scores, worst, all_rows


def evaluate(model_uri: str, tasks: Sequence[str], data_uris: Mapping[str, str], out_dir: str | Path,
             cfg: EvalConfig, tracking: TrackingConfig | None = None, storage: StorageConfig | None = None,
             run_id: str | None = None, num_gpus: float = 0.0) -> dict[str, Any]:
    """Run every task, score it, write predictions.parquet + scores.json + report/ under `out_dir` (a local folder
    or an s3:// URI: then everything is written locally first and uploaded), and log to MLflow when `tracking`
    or `run_id` is given (metrics `eval/<task>/<metric>`, `eval/group/<group>`; artifacts under `eval/`).

    Returns {"tasks": {task: {metric: value}}, "groups": {group: mean primary}, "metrics": flat MLflow keys,
    "predictions": parquet URI, "report": HTML URI, "run_id": MLflow run id or None}.
    """
    missing = [t for t in tasks if t not in data_uris]
    if missing:
        raise ValueError(f"no data URI for eval task(s) {missing}; give --data TASK=URI (have: {sorted(data_uris)})")
    for name in tasks:
        get_task(name)
    remote = is_remote(str(out_dir))
    with tempfile.TemporaryDirectory(prefix="deco-eval-") as tmp:
        out = Path(tmp) if remote else Path(get_filesystem(str(out_dir))[1])
        task_scores, worst, all_rows = score_tasks(model_uri, tasks, data_uris, out, cfg, storage, num_gpus)
        groups = group_scores(task_scores)
        blind = {t: {k.removeprefix("blind/"): v for k, v in s.items() if k.startswith("blind/")} or None
                 for t, s in task_scores.items()}
        baselines = baselines_of(task_scores, blind)
        pq.write_table(pa.Table.from_pylist(all_rows), out / "predictions.parquet")
        (out / "scores.json").write_text(json.dumps({"tasks": task_scores, "groups": groups,
                                                     "baselines": baselines}, indent=2))
        header = {"model": model_uri, **{f"data {t}": data_uris[t] for t in tasks}}
        write_report(out / "report", {t: {k: v for k, v in s.items() if not k.startswith("blind/")}
                                      for t, s in task_scores.items()}, groups,
                     {t: get_task(t).group for t in tasks}, {t: get_task(t).primary for t in tasks}, worst,
                     header, baselines=baselines)
        metrics = flat_metrics(task_scores, groups)
        logged_run = None
        if tracking is not None or run_id is not None:
            params = {f"eval.{k}": v for k, v in to_dict(cfg).items()} | {"eval.model_uri": model_uri}
            artifacts = {"eval": out / "predictions.parquet", "eval/report": out / "report",
                         "eval/scores": out / "scores.json"}
            clean = {t: {k: v for k, v in s.items() if not k.startswith("blind/")} for t, s in task_scores.items()}
            primaries = {t: get_task(t).primary for t in tasks}
            logged_run = log_to_mlflow(metrics, artifacts, tracking or TrackingConfig(),
                                       Path.cwd() if remote else out, params, run_id,
                                       views=lambda client, rid: log_views(client, rid, clean, primaries, baselines,
                                                                           all_rows))
        if remote:
            _upload(out, str(out_dir), storage)
    base = str(out_dir) if remote else str(out)
    return {"tasks": task_scores, "groups": groups, "baselines": baselines, "metrics": metrics,
            "predictions": join_uri(base, "predictions.parquet"), "report": join_uri(base, "report", "report.html"),
            "run_id": logged_run}


def _upload(local: Path, uri: str, storage: StorageConfig | None) -> None:
    """Copy the local result folder (without the Ray generation parts) to `uri`."""
    copy_dir(local, uri, storage, names=["predictions.parquet", "scores.json", "report"])
    logger.info("uploaded the eval results to %s", uri)
