"""Where a training stage reads its data and keeps its checkpoints: the weighted shard sources of pretrain or
finetune (configured sources, else the ShapesWorld shards the prepare_data stage wrote) and the Ray Train
storage path of a pipeline."""

from __future__ import annotations

from typing import Any

from deco_core.config import Config
from deco_core.data.storage import join_uri


def train_sources(cfg: Config, stage: str, prepared: dict[str, Any]) -> tuple[list[tuple[str, float]], str | None]:
    """(sources, validation URI) for a training stage: configured sources, else the prepared ShapesWorld shards
    (``prepared``: the prepare_data stage's outputs)."""
    configured = cfg.data.pretrain_sources if stage == "pretrain" else cfg.data.finetune_sources
    if configured:
        return [(s.uri, s.weight) for s in configured], None
    if stage == "finetune" and prepared.get("finetune_formats"):
        # instructions and benchmark-format samples, mixed in proportion to their sizes
        mix = [(prepared["finetune"], float(prepared.get("finetune_samples", 1))),
               (prepared["finetune_formats"], float(prepared.get("finetune_formats_samples", 1)))]
        return mix, prepared.get("val_finetune")
    return [(prepared[stage], 1.0)], prepared.get(f"val_{stage}")


def ray_storage(cfg: Config) -> str:
    """Where Ray Train keeps checkpoints for every stage of this pipeline: ``pipeline.train_storage``, else
    ``<root>/ray``."""
    return cfg.pipeline.train_storage or join_uri(cfg.pipeline.root, "ray")


__all__ = ["ray_storage", "train_sources"]
