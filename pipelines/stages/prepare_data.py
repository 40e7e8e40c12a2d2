"""Stage prepare_data: write the ShapesWorld training shards, or check the configured shard sources."""

from __future__ import annotations

import logging
from typing import Any

from deco_core.data.corpus import build_shapes_corpus
from deco_core.data.shards import read_manifest
from pipelines.workflow.context import StageContext

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, Any]:
    """Write the ShapesWorld shards (or read the configured sources' manifests); log them as MLflow datasets."""
    data = ctx.cfg.data
    if data.pretrain_sources or data.finetune_sources:
        out: dict[str, Any] = {}
        manifests = {}
        for kind, sources in (("pretrain", data.pretrain_sources), ("finetune", data.finetune_sources)):
            for i, src in enumerate(sources):
                manifest = manifests[f"{kind}_{i}"] = read_manifest(src.uri, data.storage)
                out[f"{kind}_{i}_samples"] = manifest.total_samples
                log.info("%s source %s: %d samples in %d shards", kind, src.uri, manifest.total_samples,
                         len(manifest.rows))
        _log_datasets(ctx, manifests)
        return out
    uris = build_shapes_corpus(data, root=ctx.out_uri("shards"))
    manifests = {k: read_manifest(v, data.storage) for k, v in uris.as_dict().items()}
    _log_datasets(ctx, manifests)
    return {**uris.as_dict(), **{f"{k}_samples": m.total_samples for k, m in manifests.items()}}


def _log_datasets(ctx: StageContext, manifests: dict[str, Any]) -> None:
    """The shard sets as MLflow inputs of this stage's run and of the workflow's parent run."""
    if not ctx.run_id:
        return
    from mlflow import MlflowClient

    from deco_core.tracking import log_shard_datasets

    client = MlflowClient(ctx.tracking_uri)
    for run_id in filter(None, (ctx.run_id, ctx.parent_run_id)):
        for context in ("training", "validation"):
            chosen = {k: m for k, m in manifests.items() if k.startswith("val_") == (context == "validation")}
            log_shard_datasets(client, run_id, chosen, context)

