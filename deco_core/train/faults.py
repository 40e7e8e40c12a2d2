"""Test-only fault injection: SIGKILL the last rank once at a chosen step (never set in production).

The integration tests of restart and exact resume (tests/integration/test_training.py, test_resume.py) set the
environment variable ``DECO_TEST_FAIL_AT_STEP`` in the driver process; ``fault_hook_from_env`` (called by the
driver when it builds the workers' ``LoopConfig``) turns it into a ``FaultHook``, and the training loop calls
``maybe_inject_fault`` before every micro-step. It is not part of the config schema, so it is never composed,
logged or fingerprinted. The marker file beside the run's checkpoints makes the kill happen on the first
attempt only; object-store storage (a ``://`` path) has no local marker, so the hook is off there.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FAIL_AT_STEP_ENV = "DECO_TEST_FAIL_AT_STEP"
"""Test-only: the optimizer step at which the last rank is SIGKILLed (first attempt only)."""
MARKER_NAME = ".fault_injected"


@dataclass(frozen=True)
class FaultHook:
    """Kill the last rank when it is about to run optimizer step ``step`` + 1, unless ``marker`` exists."""

    step: int
    marker: str


def fault_hook_from_env(storage_path: str, run_name: str) -> FaultHook | None:
    """The hook ``DECO_TEST_FAIL_AT_STEP`` asks for (marker: <storage_path>/<run_name>/.fault_injected), or None."""
    raw = os.environ.get(FAIL_AT_STEP_ENV, "").strip()
    if not raw:
        return None
    step = int(raw)
    if step < 1:
        raise ValueError(f"{FAIL_AT_STEP_ENV}={raw!r}: expected a step >= 1")
    if "://" in storage_path:
        log.warning("%s is set but storage %s is not local: no fault is injected", FAIL_AT_STEP_ENV, storage_path)
        return None
    log.warning("test hook %s=%d: the last rank will be killed once at that step", FAIL_AT_STEP_ENV, step)
    return FaultHook(step, os.path.join(storage_path, run_name, MARKER_NAME))


def maybe_inject_fault(hook: FaultHook | None, step: int, rank: int, world: int) -> None:
    """SIGKILL this process when ``hook`` targets ``step`` on the last rank and has not fired yet.

    It first waits a few seconds: Ray Train's controller collects reported checkpoints on its health-check poll
    (every 2 s), and a real crash would not land within milliseconds of the previous checkpoint either.
    """
    if hook is None or step != hook.step or rank != world - 1:
        return
    marker = Path(hook.marker)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"fault injected at step {step}\n")
    time.sleep(5.0)
    log.error("fault injection: rank %d (pid %d) is killed at step %d", rank, os.getpid(), step)
    os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["FAIL_AT_STEP_ENV", "FaultHook", "fault_hook_from_env", "maybe_inject_fault"]
