"""Relevance figures (PNG, matplotlib's Agg canvas; pyplot's global state is never touched).

`plot_relevance`: one row per answer word with the image, the Text-to-Query map on the √M x √M query grid
and the Text-to-Patch heatmap upsampled over the image, in the spirit of the paper's figure.
`plot_locality`: probe images with the target box and the answer's T2P heatmap, titled with their scores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from deco_core.analysis.relevance import RelevanceResult
from deco_core.data.prompts import IMAGE_TOKEN
from deco_core.data.transforms import expand_to_square, resize_and_crop

log = logging.getLogger(__name__)

CMAP = "jet"
OVERLAY_ALPHA = 0.5


def model_view(model, image: Image.Image) -> Image.Image:
    """The image as the model sees it: padded to square with the mean colour, resized and centre-cropped."""
    v = model.cfg.vision
    image = image.convert("RGB")
    if v.pad_to_square:
        image = expand_to_square(image, tuple(int(round(m * 255)) for m in v.image_mean))
    return resize_and_crop(image, int(v.image_size))


def upsample(values: torch.Tensor, grid: int, size: int) -> np.ndarray:
    """A row-major map [grid*grid] -> [size, size] by bilinear interpolation (cell centres aligned)."""
    cells = values.detach().float().reshape(1, 1, grid, grid)
    return F.interpolate(cells, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _short(text: str, limit: int = 80) -> str:
    """One line of at most `limit` characters, without the image placeholder."""
    line = " ".join(text.replace(IMAGE_TOKEN, " ").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _new_figure(rows: int, cols: int, cell: float = 2.2) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(cols * cell, rows * cell), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _draw_query_map(ax, values: torch.Tensor, grid: int | None) -> None:
    """T2Q on its √M x √M grid, or as bars over query index when the queries form no grid."""
    if grid is None:
        ax.bar(np.arange(values.numel()), values.numpy(), color="tab:blue", width=1.0)
        ax.set_ylim(0, 1)
    else:
        ax.imshow(values.reshape(grid, grid).numpy(), cmap=CMAP, vmin=0, vmax=1, interpolation="nearest")


def _overlay(ax, image: np.ndarray, values: torch.Tensor, grid: int) -> None:
    ax.imshow(image)
    ax.imshow(upsample(values, grid, image.shape[0]), cmap=CMAP, vmin=0, vmax=1, alpha=OVERLAY_ALPHA)


def plot_relevance(result: RelevanceResult, image: Image.Image, path: str | Path, max_words: int = 16) -> Path:
    """Write the per-word figure (rows: words; columns: image, T2Q, T2P over the image) to `path`.

    `image` should be what the model saw (`model_view`), so the heatmap lines up with it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    words = result.words[:max_words]
    if len(result.words) > max_words:
        log.info("relevance figure: showing the first %d of %d words", max_words, len(result.words))
    pixels = np.asarray(image.convert("RGB"))
    fig, axes = _new_figure(len(words), 3)
    headers = ("image", f"text-to-query ({result.t2q.shape[1]} queries)",
               f"text-to-patch ({result.projector}, {result.q2p_method})")
    for col, header in enumerate(headers):
        axes[0, col].set_title(header, fontsize=8)
    for row, word in enumerate(words):
        axes[row, 0].imshow(pixels)
        axes[row, 0].set_ylabel(repr(word), fontsize=9)
        _draw_query_map(axes[row, 1], result.t2q[row], result.query_grid)
        _overlay(axes[row, 2], pixels, result.t2p[row], result.patch_grid)
    fig.suptitle(f"Q: {_short(result.prompt)}\nA: {_short(result.answer)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    log.info("wrote relevance figure %s", path)
    return path


def plot_locality(examples: Sequence[tuple[Any, RelevanceResult]], scores: dict[str, Any], path: str | Path,
                  image_size: int | None = None) -> Path:
    """Probe images with the target box (white) and the answer's T2P heatmap; suptitle = aggregate scores.

    `examples` are (LocalitySample, RelevanceResult) pairs; images are resized to `image_size` when given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not examples:
        raise ValueError("plot_locality: no examples to draw")
    cols = min(4, len(examples))
    rows = -(-len(examples) // cols)
    fig, axes = _new_figure(rows, cols, cell=2.4)
    for ax in axes.flat[len(examples):]:
        ax.set_axis_off()
    for ax, (sample, result) in zip(axes.flat, examples, strict=False):
        image = sample.image()
        if image_size:
            image = image.resize((image_size, image_size), Image.BICUBIC)
        pixels = np.asarray(image)
        size = pixels.shape[0]
        _overlay(ax, pixels, result.answer_t2p, result.patch_grid)
        x1, y1, x2, y2 = (v * size for v in sample.bbox)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linewidth=1.5))
        row = next((r for r in scores.get("per_sample", []) if r["key"] == sample.key), None)
        detail = f"\nin box {row['share']:.2f} / {row['baseline']:.2f}" if row else ""
        ax.set_title(f"{sample.kind}: {result.answer!r}{detail}", fontsize=8)
    fig.suptitle(f"T2P mass in box {scores['mass_in_box']:.3f} vs uniform {scores['uniform_baseline']:.3f} "
                 f"(mass_lift {scores['mass_lift']:.2f}); pointing {scores['pointing_hit_rate']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    log.info("wrote locality figure %s", path)
    return path


__all__ = ["model_view", "plot_locality", "plot_relevance", "upsample"]
