"""The stage DAG's cache keys: a config change invalidates exactly that stage and everything downstream."""

from __future__ import annotations

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
