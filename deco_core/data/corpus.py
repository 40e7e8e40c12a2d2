"""Building the training corpus as shards: ShapesWorld captions (pretrain), instructions (finetune) and a
held-out validation split, each a shard folder with its manifest under ``data.root``."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from deco_core.config import DataConfig
from deco_core.data.shapes import SHAPES_GENERATORS, caption_samples, instruct_samples
from deco_core.data.shards import write_shards
from deco_core.data.storage import join_uri

log = logging.getLogger(__name__)


@dataclass
class CorpusUris:
    pretrain: str
    finetune: str
    finetune_formats: str
    val_pretrain: str
    val_finetune: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def corpus_uris(root: str) -> CorpusUris:
    return CorpusUris(join_uri(root, "pretrain"), join_uri(root, "finetune"), join_uri(root, "finetune_formats"),
                      join_uri(root, "val_pretrain"), join_uri(root, "val_finetune"))


FORMAT_STREAMS = ("vqa", "pope", "mc", "rec")


def format_counts(n: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Samples per format stream: n split by the mixture weights (largest remainders get the rounding)."""
    unknown = set(mix) - set(FORMAT_STREAMS)
    if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"data.format_mix={dict(mix)}: expected non-negative weights (not all 0) over "
                         f"{', '.join(FORMAT_STREAMS)}")
    total = sum(mix.values())
    exact = {k: n * w / total for k, w in mix.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def interleave(streams: Mapping[str, Iterator[dict]], counts: Mapping[str, int], seed: int) -> Iterator[dict]:
    """Samples of several streams in one seeded random order (stream i appears counts[i] times), so that every
    shard holds every task in its share — a reader's file/block shuffle never sees one-task shards."""
    order = np.repeat(np.arange(len(counts)), list(counts.values()))
    np.random.default_rng(seed).shuffle(order)
    names = list(counts)
    for i in order:
        yield next(streams[names[int(i)]])


def format_samples(n: int, seed: int, split: str, shapes, mix: Mapping[str, float] | None = None) -> Iterator[dict]:
    """Benchmark-format training samples (short-answer VQA, yes/no, A-D choice, referring boxes), like the
    VQAv2 / A-OKVQA / RefCOCO parts of LLaVA-665K: n split over the formats by ``mix`` (equal by default) and
    interleaved sample by sample, drawn from the *train* split so they never share an image with the eval sets."""
    counts = format_counts(n, mix or dict.fromkeys(FORMAT_STREAMS, 1.0))
    streams = {k: SHAPES_GENERATORS[k][0](c, seed=seed, split=split, config=shapes) for k, c in counts.items()}
    yield from interleave(streams, counts, seed)


def build_shapes_corpus(data: DataConfig, root: str | None = None, progress: bool = True) -> CorpusUris:
    """Write the ShapesWorld training shards (deterministic in ``data.shapes.seed``)."""
    root = root or data.root
    uris = corpus_uris(root)
    seed, shapes = data.shapes.seed, data.shapes
    n_val = max(64, data.eval_samples // 4)
    plan = [
        (uris.pretrain, caption_samples(data.caption_samples, seed, "train", shapes), "shapes-caption", "train"),
        (uris.finetune, instruct_samples(data.instruct_samples, seed, "train", shapes), "shapes-instruct", "train"),
        (uris.finetune_formats, format_samples(data.format_samples, seed, "train", shapes, data.format_mix),
         "shapes-formats",
         "train"),
        (uris.val_pretrain, caption_samples(n_val, seed, "val", shapes), "shapes-caption", "val"),
        (uris.val_finetune, instruct_samples(n_val, seed, "val", shapes), "shapes-instruct", "val"),
    ]
    totals = [data.caption_samples, data.instruct_samples, data.format_samples, n_val, n_val]
    for (uri, samples, source, split), total in zip(plan, totals, strict=True):
        manifest = write_shards(samples, uri, source=source, split=split, samples_per_shard=data.samples_per_shard,
                                storage=data.storage, progress=progress, total=total)
        log.info("wrote %d %s/%s samples in %d shards to %s", manifest.total_samples, source, split,
                 len(manifest.rows), uri)  # one line per split (the per-shard lines are DEBUG)
    return uris
