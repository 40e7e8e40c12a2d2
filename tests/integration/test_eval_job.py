"""Integration tests: the eval job end to end on real Ray Data actors with an untrained tiny model, logging to a
real MLflow server: frozen ShapesWorld shards -> predictions parquet -> scores -> report -> MLflow."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from deco_core.config import EvalConfig, TrackingConfig
from deco_core.data.shards import read_manifest

pytestmark = pytest.mark.integration

TASKS = ["shapes-vqa", "shapes-pope", "shapes-mc", "shapes-rec"]
COUNTS = {"n", "n_errors"}  # metrics that are counts, not scores


@pytest.fixture(scope="module")
def untrained_model_dir(tmp_path_factory, shapes_tokenizer, tiny_cfg) -> str:
    """An untrained tiny DecoModel exported with save_pretrained (loaded back by each actor)."""
    from deco_core.model.deco import DecoModel

    out = tmp_path_factory.mktemp("untrained-model")
    untrained = replace(tiny_cfg.model, vision=replace(tiny_cfg.model.vision, path=None),
                        llm=replace(tiny_cfg.model.llm, path=None))  # random tower and LLM, not the foundation builds
    DecoModel.from_config(untrained, shapes_tokenizer).save_pretrained(out)
    return str(out)


def _eval_cfg(num_actors: int) -> EvalConfig:
    return EvalConfig(tasks=TASKS, max_new_tokens=10, batch_size=32, num_actors=num_actors, cpus_per_actor=1.0,
                      worst_cases=3)


def _check_run(result: dict, data: dict[str, str]) -> None:
    """Rows = questions per task; every score in [0, 1]; untrained model: POPE at chance, REC near 0."""
    table = pq.read_table(result["predictions"])
    expected = {t: read_manifest(u).total_samples for t, u in data.items()}
    per_task = {t: n for t, n in zip(*_counts(table), strict=True)}
    assert per_task == expected
    assert len(set(table.column("question_id").to_pylist())) == table.num_rows
    for task, scores in result["tasks"].items():
        for name, value in scores.items():
            if name.split("/")[-1] not in COUNTS and not name.split("/")[-1].startswith("n_"):  # counts
                assert 0.0 <= value <= 1.0, (task, name, value)
        assert scores["n"] == expected[task] and scores["n_errors"] == 0
    assert abs(result["tasks"]["shapes-pope"]["accuracy"] - 0.5) <= 0.15
    assert result["tasks"]["shapes-rec"]["acc_at_0.5"] <= 0.05
    assert set(result["groups"]) == {"open-ended VQA", "MLLM benchmarks", "localization"}


def _counts(table) -> tuple[list[str], list[int]]:
    tasks = table.column("task").to_pylist()
    names = sorted(set(tasks))
    return names, [tasks.count(n) for n in names]


def test_eval_job_on_ray_actors_is_complete_deterministic_and_logged(
        ray_local, untrained_model_dir, tmp_path, mlflow_server) -> None:
    """~300 questions through 2 Ray Data actors: one row per question, scores in [0,1], chance-level untrained
    scores, a report with worst-case images, metrics and artifacts in MLflow, and identical scores on a rerun
    with a different actor count."""
    from mlflow import MlflowClient

    from deco_core.eval.runner import build_shapes_eval_shards, evaluate

    data = build_shapes_eval_shards(str(tmp_path / "data"), n=75, seed=0, tasks=TASKS, samples_per_shard=40)
    assert sum(read_manifest(u).total_samples for u in data.values()) >= 300
    tracking = TrackingConfig(tracking_uri=mlflow_server.uri, experiment="eval-job-test")
    first = evaluate(untrained_model_dir, TASKS, data, tmp_path / "run1", _eval_cfg(2), tracking)
    _check_run(first, data)

    report = tmp_path / "run1" / "report"
    assert (report / "report.html").is_file() and (report / "scores.png").is_file()
    assert len(list((report / "images").glob("*.png"))) == 3 * len(TASKS)

    run = MlflowClient(mlflow_server.uri).get_run(first["run_id"])
    assert run.data.metrics["eval/shapes-pope/accuracy"] == pytest.approx(first["tasks"]["shapes-pope"]["accuracy"])
    assert "eval/group/localization" in run.data.metrics
    artifacts = {a.path for a in MlflowClient(mlflow_server.uri).list_artifacts(first["run_id"], "eval")}
    assert {"eval/predictions.parquet", "eval/report", "eval/scores_chart.png", "eval/scores_table.json",
            "eval/answers_table.json"} <= artifacts
    import json

    local = MlflowClient(mlflow_server.uri).download_artifacts(first["run_id"], "eval/scores_table.json", str(tmp_path))
    table = json.loads(Path(local).read_text())  # log_table's layout: {"columns": [...], "data": [[...], ...]}
    assert {"task", "score", "blind", "chance"} <= set(table["columns"])
    assert sorted(row[table["columns"].index("task")] for row in table["data"]) == sorted(TASKS)

    rebuilt = build_shapes_eval_shards(str(tmp_path / "data2"), n=75, seed=0, tasks=["shapes-rec"],
                                       samples_per_shard=40)
    assert read_manifest(rebuilt["shapes-rec"]).rows[0].sha256 == read_manifest(data["shapes-rec"]).rows[0].sha256
    second = evaluate(untrained_model_dir, TASKS, data, tmp_path / "run2", _eval_cfg(1), None)
    assert second["tasks"] == first["tasks"]
    assert second["run_id"] is None


def test_eval_limit_caps_questions_and_results_go_to_s3(ray_local, untrained_model_dir, tmp_path, s3_server,
                                                       s3_bucket) -> None:
    """`eval.limit` caps the questions per task, and an s3:// output folder receives predictions and report."""
    from deco_core.data.storage import get_filesystem
    from deco_core.eval.runner import build_shapes_eval_shards, evaluate

    data = build_shapes_eval_shards(str(tmp_path / "data"), n=30, seed=1, tasks=["shapes-mc"])
    cfg = _eval_cfg(1)
    cfg.limit, cfg.worst_cases = 7, 1
    out = f"{s3_bucket}/eval/run1"
    result = evaluate(untrained_model_dir, ["shapes-mc"], data, out, cfg, storage=s3_server.storage)
    assert result["tasks"]["shapes-mc"]["n"] == 7
    assert result["predictions"] == f"{out}/predictions.parquet"
    fs, path = get_filesystem(out, s3_server.storage)
    with fs.open(f"{path}/predictions.parquet", "rb") as f:
        assert pq.read_table(f).num_rows == 7
    assert fs.exists(f"{path}/report/report.html") and fs.exists(f"{path}/report/images/shapes-mc_00.png")


def test_deco_eval_command_prints_scores(ray_local, untrained_model_dir, tmp_path) -> None:
    """`deco eval` builds the missing ShapesWorld eval set, evaluates and prints the score table and report path."""
    from typer.testing import CliRunner

    from deco_core.cli import app

    result = CliRunner().invoke(app, ["eval", "--model", untrained_model_dir, "--tasks", "shapes-mc,shapes-pope",
                                      "--out", str(tmp_path / "out"), "data.eval_samples=12", "eval.worst_cases=1"])
    assert result.exit_code == 0, result.output
    assert "shapes-mc" in result.output and "MLLM benchmarks" in result.output
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    assert read_manifest(str(tmp_path / "out" / "data" / "shapes-pope")).total_samples == 12


@pytest.mark.slow
def test_eval_job_at_2000_questions(ray_local, untrained_model_dir, tmp_path) -> None:
    """A 2,000-question eval (500 per task) completes with one row per question and chance-level scores."""
    from deco_core.eval.runner import build_shapes_eval_shards, evaluate

    data = build_shapes_eval_shards(str(tmp_path / "data"), n=500, seed=2, tasks=TASKS, samples_per_shard=250)
    assert sum(read_manifest(u).total_samples for u in data.values()) >= 2000
    _check_run(evaluate(untrained_model_dir, TASKS, data, tmp_path / "out", _eval_cfg(2)), data)


def test_model_and_eval_shards_on_s3(untrained_model_dir, s3_server, s3_bucket) -> None:
    """A model and frozen eval shards on an S3 endpoint load and answer like their local copies."""
    from deco_core.data.shards import iter_samples
    from deco_core.data.storage import get_filesystem
    from deco_core.eval.generate import generate_local, load_model
    from deco_core.eval.runner import build_shapes_eval_shards, worst_cases

    storage = s3_server.storage
    fs, path = get_filesystem(f"{s3_bucket}/model", storage)
    fs.put(untrained_model_dir.rstrip("/") + "/", path, recursive=True)
    data = build_shapes_eval_shards(f"{s3_bucket}/eval", n=6, seed=0, tasks=["shapes-pope"], storage=storage)
    remote = load_model(f"{s3_bucket}/model", storage)
    local = load_model(untrained_model_dir)
    records = list(iter_samples(data["shapes-pope"], storage))
    rows = generate_local(remote, records, "shapes-pope", batch_size=6, max_new_tokens=4)
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in
                                               generate_local(local, records, "shapes-pope", max_new_tokens=4)]
    cases = worst_cases("shapes-pope", rows, 2, data["shapes-pope"], storage)
    assert len(cases) == 2 and all(c.image_png for c in cases)
