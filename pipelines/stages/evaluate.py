"""Stage evaluate: batch generation on Ray Data actors over a frozen eval set, scores to MLflow + a report."""

from __future__ import annotations

from typing import Any

from deco_core.data.storage import join_uri
from pipelines.runtime import ensure_ray
from pipelines.stages.common import stage_main


def eval_data(cfg) -> dict[str, str]:
    """Task -> shard URI: configured URIs, plus ShapesWorld eval shards, generated from ``data.shapes`` and cached
    under a fingerprint of everything that shapes them (``eval_data/<fingerprint>``)."""
    from deco_core.data.shards import read_manifest
    from deco_core.eval.runner import build_shapes_eval_shards, eval_set_fingerprint, shapes_tasks

    uris = dict(cfg.eval.data)
    shapes = [t for t in cfg.eval.tasks if t not in uris and t in shapes_tasks()]
    if shapes:
        digest = eval_set_fingerprint(cfg.data.eval_samples, cfg.eval.seed, cfg.data.shapes)
        root = join_uri(cfg.pipeline.root, "eval_data", digest)
        for task in list(shapes):
            try:
                read_manifest(join_uri(root, task), cfg.data.storage)
                uris[task] = join_uri(root, task)
                shapes.remove(task)
            except (FileNotFoundError, OSError):
                pass
        if shapes:
            uris.update(build_shapes_eval_shards(root, cfg.data.eval_samples, cfg.eval.seed, shapes,
                                                 storage=cfg.data.storage, shapes=cfg.data.shapes))
    return uris


def run(ctx) -> dict[str, Any]:
    from dataclasses import replace

    from deco_core.eval.runner import evaluate

    cfg = ctx.cfg
    ensure_ray(cfg)
    model = ctx.inputs["finetune"]["model"]
    tracking = replace(cfg.tracking, tracking_uri=ctx.tracking_uri)  # log into the workflow's store
    result = evaluate(model, cfg.eval.tasks, eval_data(cfg), ctx.out_uri(), cfg.eval, tracking,
                      storage=cfg.data.storage, run_id=ctx.run_id)
    return {"model": model, "report": result["report"], "predictions": result["predictions"],
            "scores": result["predictions"].rsplit("/", 1)[0] + "/scores.json",
            **{k: round(v, 4) for k, v in result["metrics"].items() if not k.endswith("n_errors")}}


if __name__ == "__main__":
    stage_main("evaluate")
