"""The frozen eval set of a pipeline: task -> shard URI, from the configured URIs plus ShapesWorld eval shards
generated once from ``data.shapes`` and cached under a fingerprint of everything that shapes them
(``<root>/eval_data/<fingerprint>/<task>``). Used by the evaluate stage, retraining and the reproduce grid."""

from __future__ import annotations

from deco_core.config import Config
from deco_core.data.storage import join_uri


def eval_data(cfg: Config) -> dict[str, str]:
    """Task -> shard URI: configured URIs, plus ShapesWorld eval shards (built when not cached yet)."""
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


__all__ = ["eval_data"]
