"""The stage DAG's cache keys: a config change invalidates exactly that stage and everything downstream."""

from __future__ import annotations

import shutil

import pytest

from deco_core.config import compose
from pipelines.workflow.dag import stage_table
from pipelines.workflow.fingerprint import fingerprints
from pipelines.workflow.runner import Workflow
from pipelines.workflow.state import StateStore


def _fps(*overrides: str) -> dict[str, str]:
    return fingerprints(compose("pipeline/tiny", list(overrides)), stage_table())


@pytest.mark.parametrize(
    ("override", "changed"),
    [
        ("eval.max_new_tokens=8", {"evaluate", "register"}),
        ("finetune.lr=1e-4", {"finetune", "evaluate", "analyze", "register"}),
        ("pretrain.max_steps=7", {"pretrain", "finetune", "evaluate", "analyze", "register"}),
        ("data.caption_samples=100", {"prepare_data", "pretrain", "finetune", "evaluate", "analyze", "register"}),
        ("analysis.num_samples=4", {"analyze"}),
        ("ray.num_cpus=8", set()),
    ],
)
def test_change_invalidates_stage_and_downstream_only(override, changed):
    """Changing one section changes the fingerprints of its stage and the stages after it, nothing upstream."""
    base, new = _fps(), _fps(override)
    assert {s for s in base if base[s] != new[s]} == changed


def test_a_rebuilt_model_at_the_same_path_invalidates_training_and_downstream(tmp_path):
    """A new foundation build (or any changed checkpoint) under an unchanged model.llm.path is not served stale."""
    llm = tmp_path / "llm"
    shutil.copytree(compose("pipeline/tiny", []).model.llm.path, llm)
    before = _fps(f"model.llm.path={llm}")
    assert before == _fps(f"model.llm.path={llm}")
    (llm / "foundation.json").write_text('{"built_at": "later"}')
    after = _fps(f"model.llm.path={llm}")
    assert {s for s in before if before[s] != after[s]} == {"pretrain", "finetune", "evaluate", "analyze", "register"}
    plain = tmp_path / "plain"  # a checkpoint without a manifest: its files' sizes and times
    shutil.copytree(llm, plain)
    (plain / "foundation.json").unlink()
    first = _fps(f"model.llm.path={plain}")
    (plain / "model.safetensors").write_bytes(b"other weights")
    assert _fps(f"model.llm.path={plain}")["pretrain"] != first["pretrain"]


def test_fingerprints_are_stable():
    """The same config gives the same fingerprints (no time or randomness in the key)."""
    assert _fps() == _fps()


def test_state_store_round_trip_is_atomic(tmp_path):
    """State updates merge per stage and leave no temporary file behind."""
    store = StateStore(str(tmp_path))
    store.update("pretrain", status="running", fingerprint="abc")
    store.update("pretrain", status="completed", outputs={"model": "/m"})
    state = store.load()
    assert state["stages"]["pretrain"] == {"status": "completed", "fingerprint": "abc", "outputs": {"model": "/m"}}
    assert sorted(p.name for p in (tmp_path / "workflow").iterdir()) == ["state.json"]


def test_status_reports_stale_and_pending(tmp_path):
    """A completed stage whose config changed shows as stale; never-run stages as pending."""
    cfg = compose("pipeline/tiny", [f"pipeline.root={tmp_path}"])
    wf = Workflow(cfg)
    wf.store.update("prepare_data", status="completed", fingerprint=wf.fps["prepare_data"])
    wf.store.update("pretrain", status="completed", fingerprint="old")
    rows = {r["stage"]: r["status"] for r in wf.status()}
    assert rows["prepare_data"] == "done" and rows["pretrain"] == "stale" and rows["finetune"] == "pending"


def test_unknown_stage_is_rejected(tmp_path):
    """Asking for a stage that does not exist names the valid ones."""
    wf = Workflow(compose("pipeline/tiny", [f"pipeline.root={tmp_path}"]))
    with pytest.raises(KeyError, match="prepare_data"):
        wf.run(only=["pretrian"])


def _warm_calls(tmp_path, done: tuple[str, ...], only: list[str] | None = None, fail: bool = False) -> list[str]:
    """The stages whose warm start a run of ``only`` (all stages) begins, with ``done`` already completed."""
    from dataclasses import replace

    cfg = compose("pipeline/tiny", [f"pipeline.root={tmp_path}"])
    wf = Workflow(cfg)
    calls: list[str] = []

    def warm_of(name):
        def warm(c):
            calls.append(name)
            if fail:
                raise RuntimeError("no workers")
        return warm

    wf.stages = {n: replace(s, warm=warm_of(n)) if s.warm else s for n, s in wf.stages.items()}
    for name in done:
        wf.store.update(name, status="completed", fingerprint=wf.fps[name])
    wf._warm_start([s for s in wf.stages if only is None or s in only], force=False)
    return calls


def test_training_warms_up_while_prepare_data_runs(tmp_path):
    """A run that prepares data first starts the pretrain stage's worker group at once (one warm start)."""
    assert _warm_calls(tmp_path, ()) == ["pretrain"]


@pytest.mark.parametrize(("done", "only"), [(("prepare_data",), None), (("prepare_data", "pretrain"), None),
                                            ((), ["pretrain", "finetune"]), ((), ["evaluate"])])
def test_no_warm_start_when_nothing_runs_before_the_stage(tmp_path, done, only):
    """Cached upstream stages, a run of training stages only, or a run without training: nothing to overlap."""
    assert _warm_calls(tmp_path, done, only) == []


def test_a_failed_warm_start_is_left_to_the_stage(tmp_path, caplog):
    assert _warm_calls(tmp_path, (), fail=True) == ["pretrain"]
    assert "warm start failed" in caplog.text


def test_training_session_and_checkpoint_store_can_be_named(tmp_path):
    """`pipeline.train_session` / `train_storage` name what workflows share (the reproduce grid), else per run."""
    from deco_core.train.sources import ray_storage
    from pipelines.stages.train import session_name

    cfg = compose("pipeline/tiny", [f"pipeline.root={tmp_path}"])
    assert (session_name(cfg), ray_storage(cfg)) == ("tiny-training", f"{tmp_path}/ray")
    shared = compose("pipeline/tiny", [f"pipeline.root={tmp_path}/a", "pipeline.train_session=grid",
                                       f"pipeline.train_storage={tmp_path}/ray"])
    assert (session_name(shared), ray_storage(shared)) == ("grid", f"{tmp_path}/ray")
    assert session_name(compose("pipeline/tiny", ["pipeline.reuse_train_workers=false"])) is None
