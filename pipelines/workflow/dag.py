"""The stage DAG: prepare_data → pretrain → finetune → evaluate → analyze → register.

The only module that imports pipelines.stages; the runner, the job entry and the CLI read the table from here.
"""

from __future__ import annotations

from functools import partial

from pipelines.stages import analyze, evaluate, prepare_data, register, train
from pipelines.workflow.context import StageSpec

RAY_STAGES = ("pretrain", "finetune", "evaluate")  # stages that run on Ray


def stage_table() -> dict[str, StageSpec]:
    """Stage name -> spec, in topological order."""
    # fmt: off
    return {
        "prepare_data": StageSpec(prepare_data.run, (), ("data",), "ShapesWorld / converted shards + manifests"),
        "pretrain": StageSpec(train.run_pretrain, ("prepare_data",), ("model", "pretrain"), "alignment on captions",
                              warm=partial(train.warm, stage="pretrain")),
        "finetune": StageSpec(train.run_finetune, ("prepare_data", "pretrain"), ("finetune",), "instruction tuning",
                              warm=partial(train.warm, stage="finetune")),
        "evaluate": StageSpec(evaluate.run, ("finetune",), ("eval",), "benchmarks on a frozen eval set"),
        "analyze": StageSpec(analyze.run, ("finetune",), ("analysis",), "R-GAE relevance + locality"),
        "register": StageSpec(register.run, ("finetune", "evaluate"), ("tracking.registered_model",),
                              "MLflow registry, alias challenger"),
    }
    # fmt: on


STAGES: tuple[str, ...] = tuple(stage_table())
