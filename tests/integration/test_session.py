"""Training sessions: pretrain and finetune on one Ray Train worker group (2 CPU workers, ZeRO-2 on gloo), with
the one-stage semantics kept — each stage exports and logs to its own MLflow run, and a worker killed in either
stage resumes that stage from its own checkpoint, never from the one the other stage left behind."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from deco_core.config import compose
from deco_core.model.deco import DecoModel
from deco_core.tracking import resolve_tracking_uri
from deco_core.train.faults import FAIL_AT_STEP_ENV
from deco_core.train.ray_checkpoint import owned_by
from deco_core.train.session import close_sessions
from deco_core.train.trainer import run_stage

pytestmark = pytest.mark.integration

TWO_WORKERS = [f"{s}.{k}={v}" for s in ("pretrain", "finetune")
               for k, v in (("num_workers", 2), ("micro_batch_size", 16), ("cpus_per_worker", 0.5),
                            ("log_every", 1), ("max_steps", 6), ("checkpoint_every", 2), ("max_failures", 1))]


def _stages(cfg, corpus, tmp_path, session: str):
    """pretrain, then finetune from its export, both in the session ``session``; closes it after."""
    try:
        pre = run_stage(cfg, "pretrain", sources=[(corpus.pretrain, 1.0)], output_uri=str(tmp_path / "pre"),
                        run_name=f"{session}-pretrain", storage_path=str(tmp_path / "ray"), session=session)
        from dataclasses import replace

        fcfg = replace(cfg, finetune=replace(cfg.finetune, init_from=pre.output_uri))
        fin = run_stage(fcfg, "finetune", sources=[(corpus.finetune, 1.0)], val_uri=corpus.val_finetune,
                        output_uri=str(tmp_path / "fin"), run_name=f"{session}-finetune",
                        storage_path=str(tmp_path / "ray"), session=session)
    finally:
        close_sessions()
    return pre, fin


def _logged_steps(cfg, run_id: str) -> list[int]:
    client = MlflowClient(resolve_tracking_uri(cfg.tracking, cfg.pipeline.root))
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


def test_two_stages_share_one_worker_group_and_keep_their_own_runs(ray_local, tiny_corpus, tmp_path):
    """Both stages run in the same worker processes, each exports a loadable model, logs its steps once to its
    own MLflow run, and ends on a checkpoint named after its run."""
    cfg = compose("pipeline/tiny", [f"pipeline.root={tmp_path}", *TWO_WORKERS])
    pre, fin = _stages(cfg, tiny_corpus, tmp_path, "shared")
    assert pre.metrics["worker_pid"] == fin.metrics["worker_pid"]  # rank 0 served both stages
    assert (pre.steps, fin.steps) == (6, 6)
    assert pre.run_id != fin.run_id
    assert _logged_steps(cfg, pre.run_id) == [1, 2, 3, 4, 5, 6] == _logged_steps(cfg, fin.run_id)
    assert owned_by(pre.checkpoint, "shared-pretrain") and owned_by(fin.checkpoint, "shared-finetune")
    assert "val_loss" in fin.metrics
    tuned = DecoModel.from_pretrained(fin.output_uri)
    assert tuned.cfg.chat_template == cfg.finetune.template
    assert DecoModel.from_pretrained(pre.output_uri).cfg.chat_template != tuned.cfg.chat_template


@pytest.mark.parametrize("fail_at", [1, pytest.param(3, marks=pytest.mark.slow)],
                         ids=["before-own-checkpoint", "after-own-checkpoint"])
def test_a_killed_worker_resumes_the_stage_in_progress_from_its_own_checkpoint(
        ray_local, tiny_corpus, tmp_path, monkeypatch, fail_at):
    """A worker killed in each stage: the restarted group takes up that stage; the finetune restart at step 1
    must not load the checkpoint pretrain ended on (another stage's weights and optimizer), at step 3 it resumes
    finetune's own step-2 checkpoint; each stage logs every step once."""
    monkeypatch.setenv(FAIL_AT_STEP_ENV, str(fail_at))  # test-only hook: once per stage (marker per run)
    cfg = compose("pipeline/tiny", [f"pipeline.root={tmp_path}", *TWO_WORKERS])
    pre, fin = _stages(cfg, tiny_corpus, tmp_path, "faulty")
    for stage in ("pretrain", "finetune"):
        assert (tmp_path / "ray" / f"faulty-{stage}" / ".fault_injected").exists()
    assert (pre.steps, fin.steps) == (6, 6)
    assert _logged_steps(cfg, pre.run_id) == [1, 2, 3, 4, 5, 6] == _logged_steps(cfg, fin.run_id)
    assert fin.metrics["worker_pid"] != pre.metrics["worker_pid"]  # the group was restarted in between
