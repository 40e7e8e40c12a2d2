"""Stage pretrain: alignment on captions (``plain`` template) with Ray Train + DeepSpeed; exports the model."""

from __future__ import annotations

from typing import Any

from pipelines.runtime import ensure_ray
from pipelines.stages.common import ray_storage, stage_main, train_sources


def train(ctx, stage: str, init_from: str | None = None) -> dict[str, Any]:
    """Shared by pretrain and finetune: run the stage and return its outputs."""
    from dataclasses import replace

    from deco_core.train.trainer import run_stage

    cfg = ctx.cfg
    if init_from:
        cfg = replace(cfg, **{stage: replace(getattr(cfg, stage), init_from=init_from)})
    ensure_ray(cfg)
    sources, val_uri = train_sources(cfg, stage, ctx.inputs.get("prepare_data", {}))
    output = getattr(cfg, stage).output_uri or ctx.out_uri("model")
    result = run_stage(cfg, stage, sources=sources, val_uri=val_uri, output_uri=output, run_name=ctx.run_name,
                       storage_path=ray_storage(cfg), parent_run_id=ctx.parent_run_id)
    return {"model": result.output_uri, "steps": result.steps, "final_loss": result.metrics.get("loss"),
            "val_loss": result.metrics.get("val_loss"), "wall_s": round(result.wall_s, 1),
            "checkpoint": result.checkpoint, "mlflow_run": result.run_id}


def run(ctx) -> dict[str, Any]:
    return train(ctx, "pretrain")


if __name__ == "__main__":
    stage_main("pretrain")
