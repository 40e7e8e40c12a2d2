"""Held and warm-started training sessions: inside ``hold_sessions`` a workflow's end leaves its session open for
the next one, a failure still closes it, and the block's end closes every session; a stage on a session opened
before it began is charged only what is left of the workers' start."""

from __future__ import annotations

import pytest

from deco_core.train import session as sessions


class _Session:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def open_session(monkeypatch):
    fake = _Session()
    monkeypatch.setattr(sessions, "_OPEN", {"grid-training": fake})
    return fake


def test_a_workflow_end_closes_its_session_when_nothing_holds_it(open_session):
    sessions.close_sessions()
    assert open_session.closed == 1 and not sessions._OPEN


def test_a_held_session_outlives_a_workflow_end_and_closes_with_the_block(open_session):
    with sessions.hold_sessions():
        sessions.close_sessions()  # what the workflow runner calls at the end of a successful run
        assert open_session.closed == 0 and "grid-training" in sessions._OPEN
    assert open_session.closed == 1 and not sessions._OPEN


def test_a_failed_workflow_closes_a_held_session(open_session):
    with sessions.hold_sessions():
        sessions.close_sessions(force=True)
        assert open_session.closed == 1 and not sessions._OPEN
    assert open_session.closed == 1


def test_nested_holds_close_only_at_the_outermost_end(open_session):
    with sessions.hold_sessions():
        with sessions.hold_sessions():
            pass
        assert open_session.closed == 0
    assert open_session.closed == 1


def test_the_block_closes_sessions_when_its_body_raises(open_session):
    with pytest.raises(RuntimeError), sessions.hold_sessions():
        raise RuntimeError("grid interrupted")
    assert open_session.closed == 1 and sessions._HOLDS == 0


def test_a_warm_started_worker_group_costs_the_stage_only_what_is_left_of_its_start():
    """Workers spawned 20 s before the stage's fit() and done importing 4 s after it: the stage shows no group
    start and 4 s of imports (never a negative phase), and its phases still add up to its wall time."""
    from deco_core.train.progress import durations
    from deco_core.train.trainer import PHASES, stage_marks

    worker = {"phase/worker_process": 80.0, "phase/worker_start": 104.0, "phase/model_built": 104.5,
              "phase/data_ready": 105.0, "phase/engine_ready": 106.0, "phase/first_batch": 107.0,
              "phase/steps_done": 150.0, "phase/val_done": 150.0, "phase/export_done": 151.0, "loss": 0.4}
    driver = {"call": 97.0, "preprocessed": 104.8, "fit_start": 100.0, "fit_end": 152.0, "end": 152.5}
    phases = durations(stage_marks(worker, driver), PHASES)
    assert phases["worker_group_start"] == 0.0 and phases["worker_imports"] == 4.0
    assert min(phases.values()) >= 0
    assert sum(v for k, v in phases.items() if k != "preprocess_ahead") == 152.5 - 97.0
