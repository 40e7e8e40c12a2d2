"""Locality of Text-to-Patch relevance on ShapesWorld: is the answer's relevance on the object it names?

A fixed probe set asks one question about one object (its colour or shape; optionally its box); the answer's
T2P map is scored against that object's box: relevance mass inside the box, the uniform baseline (fraction
of patches inside), their ratio (lift), a pointing-game hit (argmax patch inside), and the §8 concentration.

One definition of the aggregate lift, under one name everywhere (CLI, figures, MLflow, reports): ``mass_lift`` =
mean mass in box / mean uniform baseline (a ratio of means). Per-sample rows carry that sample's own ``lift``; their
plain mean is not reported, since it weights small boxes far more and would read as a second, larger "lift".
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from deco_core.data.prompts import IMAGE_TOKEN, SHORT_ANSWER_SUFFIX
from deco_core.data.shapes import ShapesConfig
from deco_core.data.shapes_scene import iter_scenes, render_png
from deco_core.data.shapes_text import build_qa

log = logging.getLogger(__name__)

PROBE_STREAM = "relevance"
PROBE_SPLIT = "analysis"
TIE_TOLERANCE = 1e-6
"""Patches within this relative distance of the maximum count as argmax (pointing game)."""
DEFAULT_KINDS: tuple[str, ...] = ("colour", "shape")
"""Question types whose one-word answer is read off one object (its box is the ground truth)."""


@dataclass
class LocalitySample:
    """One probe: image, user turn, the canonical answer and the normalised xyxy box of the object it names."""

    key: str
    png: bytes
    prompt: str
    answer: str
    bbox: tuple[float, float, float, float]
    kind: str

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.png)).convert("RGB")


def locality_samples(n: int, seed: int = 0, kinds: Sequence[str] = DEFAULT_KINDS,
                     config: ShapesConfig | None = None) -> list[LocalitySample]:
    """A fixed, deterministic probe set: sample i asks kinds[i % len(kinds)] about one object (non-spatial
    wording, short-answer suffix), from its own (seed, split 'analysis', stream 'relevance') image stream."""
    config = config or ShapesConfig()
    if not kinds:
        raise ValueError("locality_samples: kinds is empty; expected question types such as colour, shape")
    out = []
    for index, scene, rng in iter_scenes(PROBE_STREAM, n, seed, PROBE_SPLIT, config):
        kind = kinds[index % len(kinds)]
        qa = build_qa(kind, scene, rng, config, spatial=False)
        if qa is None or qa.target is None:
            raise ValueError(f"locality_samples: question type {kind!r} does not name one object; "
                             f"use colour, shape, size or ground")
        prompt = f"{IMAGE_TOKEN}\n{qa.question}" + (f"\n{SHORT_ANSWER_SUFFIX}" if qa.short else "")
        box = tuple(scene.norm_box(qa.target))
        out.append(LocalitySample(f"{PROBE_STREAM}-{seed}-{index}", render_png(scene), prompt, qa.answer,
                                  box, kind))  # type: ignore[arg-type]
    return out


def patches_in_box(bbox: Sequence[float], grid: int) -> Tensor:
    """Bool [grid*grid], row-major: patch (r, c) is inside when its centre ((c+.5)/g, (r+.5)/g) lies in the box."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    inside_x = (centres >= x1) & (centres <= x2)  # columns
    inside_y = (centres >= y1) & (centres <= y2)  # rows
    return (inside_y[:, None] & inside_x[None, :]).flatten()


def map_scores(relevance: Tensor, top_fraction: float = 0.05) -> dict[str, float]:
    """§8 scores of one map r [N]: concentration 1 - H(p)/log N with p = r/Σr, and the top-`top_fraction` mass."""
    r = relevance.double().clamp(min=0)
    n = r.numel()
    total = float(r.sum())
    if total <= 0 or n < 2:
        return {"concentration": 0.0, "top_mass": 0.0}
    p = r / total
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    k = max(1, math.ceil(top_fraction * n))
    return {"concentration": 1.0 - entropy / math.log(n), "top_mass": float(p.topk(k).values.sum())}


def box_scores(relevance: Tensor, bbox: Sequence[float], grid: int) -> dict[str, float] | None:
    """Share of mass inside the box, its uniform baseline, lift and pointing hit for a map r [grid*grid].

    Pointing game with ties: the hit is the fraction of the maximal patches that lie in the box (1 or 0
    for a unique argmax). A pooled map is constant over each pooling window, so a plain argmax would just
    pick the window's first patch.

    None when no patch centre lies in the box (the baseline would be 0) or the map is all zero.
    """
    r = relevance.double().clamp(min=0)
    if r.numel() != grid * grid:
        raise ValueError(f"box_scores: map of {r.numel()} values does not fit a {grid}x{grid} patch grid")
    inside = patches_in_box(bbox, grid)
    total = float(r.sum())
    if not inside.any() or total <= 0:
        return None
    share = float(r[inside].sum()) / total
    baseline = float(inside.double().mean())
    peak = r >= r.max() * (1 - TIE_TOLERANCE)  # the argmax set: pooling gives whole windows equal values
    hit = float((peak & inside).sum()) / float(peak.sum())
    return {"share": share, "baseline": baseline, "lift": share / baseline, "hit": hit, **map_scores(r)}


def locality_scores(model, samples: Sequence[LocalitySample], teacher_force: bool = True,
                    keep_results: int = 0) -> dict[str, Any]:
    """Aggregate box locality of the answer's T2P (mean over all answer tokens) over `samples`.

    teacher_force: explain the canonical answer (True) or the model's own greedy answer (False).
    Returns means of share and baseline (`mass_in_box`, `uniform_baseline`) and hit (`pointing_hit_rate`; chance =
    `uniform_baseline`), their ratio `mass_lift` (the one lift), concentration, counts and per-sample rows (all
    JSON-ready); with
    `keep_results` > 0 also the first (sample, RelevanceResult) pairs under "results", for plotting.
    """
    from deco_core.analysis.explain import analyze_relevance

    rows: list[dict[str, Any]] = []
    results = []
    skipped = 0
    for sample in samples:
        result = analyze_relevance(model, sample.image(), sample.prompt, sample.answer if teacher_force else None)
        scores = box_scores(result.answer_t2p, sample.bbox, result.patch_grid)
        if scores is None:
            skipped += 1
            log.warning("locality: sample %s skipped (no patch centre in box %s or all-zero map)",
                        sample.key, sample.bbox)
            continue
        rows.append({"key": sample.key, "kind": sample.kind, "answer": result.answer, **scores})
        if len(results) < keep_results:
            results.append((sample, result))
    if skipped:
        log.warning("locality: %d of %d samples skipped", skipped, len(samples))
    if not rows:
        raise ValueError(f"locality: none of the {len(samples)} samples could be scored")

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    out: dict[str, Any] = {
        "num_samples": len(rows), "skipped": skipped, "teacher_forced": teacher_force,
        "mass_in_box": mean("share"), "uniform_baseline": mean("baseline"),
        "mass_lift": mean("share") / mean("baseline"), "pointing_hit_rate": mean("hit"),
        "concentration": mean("concentration"), "top_mass": mean("top_mass"), "per_sample": rows,
    }  # fmt: skip
    if keep_results:
        out["results"] = results
    return out


__all__ = ["DEFAULT_KINDS", "LocalitySample", "box_scores", "locality_samples", "locality_scores",
           "map_scores", "patches_in_box"]
