"""The tiny workflow end to end against a real `mlflow server`: a run killed during finetune resumes at
finetune (and from its last checkpoint), a second run skips every stage, and an eval-config change reruns
only evaluate and the stages after it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from deco_core.config import compose
from pipelines.workflow.runner import Workflow

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
STAGES = "[prepare_data,pretrain,finetune,evaluate,register]"


def _overrides(root: Path, mlflow_uri: str) -> list[str]:
    return [f"pipeline.root={root}", f"tracking.tracking_uri={mlflow_uri}", f"pipeline.stages={STAGES}",
            "data.caption_samples=400", "data.instruct_samples=400", "data.format_samples=200", "data.eval_samples=48",
            "pretrain.max_steps=6", "pretrain.checkpoint_every=3", "finetune.max_steps=24",
            "finetune.checkpoint_every=4", "finetune.log_every=2", "tracking.system_metrics=false"]


def _wait_for_finetune_checkpoint(root: Path, proc: subprocess.Popen, timeout: float = 400) -> None:
    """Block until the finetune stage is running and has written at least one Ray checkpoint."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "workflow exited before finetune checkpointed"
        state_file = root / "workflow" / "state.json"
        if state_file.exists():
            state = json.loads(state_file.read_text())
            if state["stages"].get("finetune", {}).get("status") == "running":
                if list((root / "ray").glob("*/checkpoint_*-finetune-*")):
                    return
        time.sleep(1)
    raise AssertionError("finetune never checkpointed")


def test_killed_run_resumes_at_finetune_then_caches(ray_local, mlflow_server, tmp_path):
    """Kill -9 during finetune; rerun resumes there; a third run skips all; an eval change reruns eval onward."""
    root = tmp_path / "wf"
    overrides = _overrides(root, mlflow_server.uri)
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "pipeline", "run", "--config",
                             "conf/pipeline/tiny.yaml", *overrides], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_finetune_checkpoint(root, proc)
        time.sleep(2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    cfg = compose("conf/pipeline/tiny.yaml", overrides)
    reports = {r.name: r for r in Workflow(cfg).run()}
    assert reports["prepare_data"].status == "skipped" and reports["pretrain"].status == "skipped"
    assert reports["finetune"].status == "completed" and reports["register"].status == "completed"

    client = MlflowClient(mlflow_server.uri)
    finetune_run = client.get_run(reports["finetune"].run_id)
    steps = [m.step for m in client.get_metric_history(finetune_run.info.run_id, "train/loss")]
    assert steps.count(2) == 1, f"finetune restarted from step 0 instead of its checkpoint: {steps}"
    assert max(steps) == 24

    again = Workflow(cfg).run()
    assert [r.status for r in again] == ["skipped"] * 5

    changed = compose("conf/pipeline/tiny.yaml", [*overrides, "eval.max_new_tokens=12"])
    statuses = {r.name: r.status for r in Workflow(changed).run()}
    assert statuses == {"prepare_data": "skipped", "pretrain": "skipped", "finetune": "skipped",
                        "evaluate": "completed", "register": "completed"}

    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    parents = client.search_runs([exp.experiment_id], "tags.`deco.kind` = 'workflow'")
    assert len(parents) == 4
    nested = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert {r.data.tags["deco.stage"] for r in nested} == {"evaluate", "register"}
    assert parents[0].data.tags["stage.finetune.status"] == "skipped"
    assert any(k.startswith("eval/") for k in client.get_run(reports["evaluate"].run_id).data.metrics)


@pytest.mark.slow
def test_default_tiny_recipe_learns_colours_and_grounding(ray_local, tmp_path):
    """The default tiny recipe answers colour questions well above chance (1/6) and looks inside the object's box."""
    import pyarrow.parquet as pq

    cfg = compose("conf/pipeline/tiny.yaml", [f"pipeline.root={tmp_path}", "tracking.system_metrics=false"])
    reports = {r.name: r for r in Workflow(cfg).run()}
    rows = pq.read_table(reports["evaluate"].outputs["predictions"]).to_pylist()
    colour = [r for r in rows if r["task"] == "shapes-vqa" and "colour" in r["prompt"]]
    accuracy = sum(r["score"] for r in colour) / len(colour)
    assert len(colour) >= 50 and accuracy > 0.4  # chance: 1/6
    assert reports["analyze"].outputs["mass_in_box"] > 2 * reports["analyze"].outputs["uniform_baseline"]
