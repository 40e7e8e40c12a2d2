"""Stage prepare_data: write the ShapesWorld training shards, or check the configured shard sources."""

from __future__ import annotations

import logging
from typing import Any

from deco_core.data.corpus import build_shapes_corpus
from deco_core.data.shards import read_manifest
from pipelines.stages.common import stage_main

log = logging.getLogger(__name__)


def run(ctx) -> dict[str, Any]:
    data = ctx.cfg.data
    if data.pretrain_sources or data.finetune_sources:
        out: dict[str, Any] = {}
        for kind, sources in (("pretrain", data.pretrain_sources), ("finetune", data.finetune_sources)):
            for i, src in enumerate(sources):
                manifest = read_manifest(src.uri, data.storage)
                out[f"{kind}_{i}_samples"] = manifest.total_samples
                log.info("%s source %s: %d samples in %d shards", kind, src.uri, manifest.total_samples,
                         len(manifest.rows))
        return out
    uris = build_shapes_corpus(data, root=ctx.out_uri("shards"))
    return {**uris.as_dict(), **{f"{k}_samples": read_manifest(v, data.storage).total_samples
                                 for k, v in uris.as_dict().items()}}


if __name__ == "__main__":
    stage_main("prepare_data")
