"""What a stage sees and what the workflow records about it: StageContext, StageSpec, StageReport.

Imports no stage and no runner, so stage modules can type their ``run(ctx: StageContext)`` against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deco_core.config import Config
from deco_core.data.storage import join_uri

RAY_JOB_TAG = "deco.ray_job_id"  # on a submitted stage's MLflow run: the Ray job that ran it


@dataclass
class StageContext:
    """What a stage function receives."""

    cfg: Config
    name: str
    fingerprint: str
    inputs: dict[str, dict[str, Any]]  # upstream stage -> its outputs
    run_name: str
    run_id: str | None
    parent_run_id: str | None
    tracking_uri: str | None
    later: tuple[str, ...] = ()  # the stages this workflow run goes on to after this one (some may be cached)

    @property
    def root(self) -> str:
        return self.cfg.pipeline.root

    def out_uri(self, *parts: str) -> str:
        """``<root>/<stage>/<fingerprint[:10]>/...``: outputs of different configs never collide."""
        return join_uri(self.root, self.name, self.fingerprint[:10], *parts)


@dataclass(frozen=True)
class StageSpec:
    """One row of the stage table: the function, upstream stages, the config sections it reads, a description,
    and optionally a warm start: work the stage can begin while the stages ahead of it in the same workflow run
    (the runner calls it once, for the first stage that will run and has one, if another stage runs first)."""

    run: Callable[[StageContext], dict[str, Any]]
    deps: tuple[str, ...]
    config_keys: tuple[str, ...]
    description: str
    warm: Callable[[Config], None] | None = None


@dataclass
class StageReport:
    """The result of one stage in one workflow run."""

    name: str
    status: str  # completed | skipped | failed | blocked
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    run_id: str | None = None
