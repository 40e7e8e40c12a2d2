"""Held training sessions: inside ``hold_sessions`` a workflow's end leaves its session open for the next one,
a failure still closes it, and the block's end closes every session."""

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
