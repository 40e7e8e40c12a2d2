"""ShapesWorld scenes: scene sampling and PNG rendering (vocabulary and `ShapesConfig`: shapes_config.py).

A scene holds 1..9 flat shapes on a light greyish background, each inside its own cell of a 3x3 grid, so
objects never overlap and every object's position word is unambiguous. All randomness comes from
`numpy.random.Generator`s seeded by (seed, split, stream, index) through `sample_rngs`: the same arguments
give byte-identical PNGs, and a different split or stream gives an independent image sequence.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from deco_core.data.shapes_config import (  # noqa: F401  (re-exported: the vocabulary is part of this API)
    COLOUR_RGB,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesConfig,
)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object; `box_px` is the tight pixel box (left, top, right, bottom), right/bottom exclusive."""

    shape: str
    colour: str
    size: str
    cell: int
    rgb: tuple[int, int, int]
    origin: tuple[int, int]
    side: int
    box_px: tuple[int, int, int, int]

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def attr(self, name: str) -> str:
        """The value of attribute `name` in {shape, colour, size, position}."""
        return self.position if name == "position" else getattr(self, name)


@dataclass(frozen=True)
class Scene:
    """A background colour and objects sorted in reading order (by grid cell)."""

    image_size: int
    background: tuple[int, int, int]
    objects: tuple[ShapeObject, ...]

    def norm_box(self, index: int) -> list[float]:
        """Normalised xyxy box of object `index`, every pixel of the object inside it."""
        s = float(self.image_size)
        return [v / s for v in self.objects[index].box_px]

    def objects_meta(self) -> list[dict[str, Any]]:
        """JSON-ready description of every object (for `meta.objects`)."""
        return [
            {"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position,
             "bbox": self.norm_box(i), "rgb": list(o.rgb)}
            for i, o in enumerate(self.objects)
        ]  # fmt: skip


def check_name(kind: str, value: str) -> str:
    """Return `value` if it is filesystem- and key-safe ([A-Za-z0-9_-]+), else raise naming it."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise ValueError(f"{kind}={value!r}: expected letters, digits, '_' or '-' only")
    return value


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def sample_rngs(
    seed: int, split: str, stream: str, index: int
) -> tuple[np.random.Generator, np.random.Generator]:
    """(scene_rng, text_rng) for sample `index` of (seed, split, stream); splits and streams are independent."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed={seed}, index={index}: expected non-negative ints")
    base = [seed, _stable_int(split), _stable_int(stream), index]
    return np.random.default_rng(base + [0]), np.random.default_rng(base + [1])


def popularity(values: tuple[str, ...], skew: float) -> np.ndarray:
    """Sampling probabilities (len(values),) decreasing with rank: weight (rank + 1) ** -skew."""
    w = (np.arange(len(values), dtype=np.float64) + 1.0) ** -skew
    return w / w.sum()


def popular_combos(config: ShapesConfig) -> list[tuple[str, str]]:
    """Every (colour, shape) combo, most frequent in the corpus first (exact expected frequency order)."""
    pc, ps = popularity(COLOURS, config.popularity_skew), popularity(SHAPES, config.popularity_skew)
    combos = [(pc[i] * ps[j], i, j) for i in range(len(COLOURS)) for j in range(len(SHAPES))]
    combos.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [(COLOURS[i], SHAPES[j]) for _, i, j in combos]


def _draw(draw: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, side: int, fill: Any) -> None:
    x1, y1 = x0 + side - 1, y0 + side - 1  # inclusive pixel bounds
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), ((x0 + x1) / 2.0, y0), (x1, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def _tight_box(shape: str, x0: int, y0: int, side: int, image_size: int) -> tuple[int, int, int, int]:
    mask = Image.new("L", (image_size, image_size), 0)
    _draw(ImageDraw.Draw(mask), shape, x0, y0, side, 255)
    box = mask.getbbox()
    if box is None:  # cannot happen for side >= 4; kept as a loud guard
        raise RuntimeError(f"{shape} of side {side} at {(x0, y0)} drew no pixels")
    return box


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    noise = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + noise, 0, 255))  # type: ignore[return-value]


def sample_scene(rng: np.random.Generator, config: ShapesConfig) -> Scene:
    """Draw a scene: object count, distinct cells, attributes, side and jittered placement inside each cell."""
    size = config.image_size
    grey = int(rng.integers(config.background_grey[0], config.background_grey[1] + 1))
    background = _jitter(rng, (grey, grey, grey), config.background_tint)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(9, size=count, replace=False))
    p_colour = popularity(COLOURS, config.popularity_skew)
    p_shape = popularity(SHAPES, config.popularity_skew)
    objects = []
    for cell in cells:
        colour = COLOURS[int(rng.choice(len(COLOURS), p=p_colour))]
        shape = SHAPES[int(rng.choice(len(SHAPES), p=p_shape))]
        size_word = SIZES[int(rng.integers(len(SIZES)))]
        lo, hi = config.small_frac if size_word == "small" else config.large_frac
        side = int(round(rng.uniform(lo, hi) * size))
        row, col = divmod(cell, 3)
        cx0, cx1 = col * size // 3, (col + 1) * size // 3
        cy0, cy1 = row * size // 3, (row + 1) * size // 3
        x0 = int(rng.integers(cx0, cx1 - side + 1))
        y0 = int(rng.integers(cy0, cy1 - side + 1))
        rgb = _jitter(rng, COLOUR_RGB[colour], config.colour_jitter)
        box = _tight_box(shape, x0, y0, side, size)
        objects.append(ShapeObject(shape, colour, size_word, cell, rgb, (x0, y0), side, box))
    return Scene(size, background, tuple(objects))


def render_png(scene: Scene) -> bytes:
    """Encode the scene as PNG bytes (no metadata, fixed settings: byte-identical for equal scenes)."""
    image = Image.new("RGB", (scene.image_size, scene.image_size), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj.shape, obj.origin[0], obj.origin[1], obj.side, obj.rgb)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def resolve_seed(seed: int | None, config: ShapesConfig) -> int:
    """`seed`, or the config's default seed when None."""
    return config.seed if seed is None else int(seed)


def iter_scenes(
    stream: str, n: int, seed: int, split: str, config: ShapesConfig, start: int = 0
) -> Iterator[tuple[int, Scene, np.random.Generator]]:
    """(index, scene, text_rng) for indices start..start+n-1 of one (seed, split, stream) sequence."""
    check_name("split", split)
    if n < 0 or start < 0:
        raise ValueError(f"n={n}, start={start}: expected non-negative ints")
    for index in range(start, start + n):
        scene_rng, text_rng = sample_rngs(seed, split, stream, index)
        yield index, sample_scene(scene_rng, config), text_rng


def scene_sample(
    stream: str,
    task: str,
    split: str,
    seed: int,
    index: int,
    scene: Scene,
    conversations: list[dict[str, str]],
    meta: dict[str, Any] | None = None,
    eval_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble one schema sample: key, PNG bytes and json (id, conversations, task, meta, eval fields)."""
    key = f"shapes_{stream}_{split}_{seed}_{index:08d}"
    full_meta = {
        "source": "shapesworld",
        "split": split,
        "seed": seed,
        "index": index,
        "image_size": scene.image_size,
        "background": list(scene.background),
        "objects": scene.objects_meta(),
        **(meta or {}),
    }
    record: dict[str, Any] = {"id": key, "conversations": conversations, "task": task, "meta": full_meta}
    record.update(eval_fields or {})
    return {"__key__": key, "png": render_png(scene), "json": record}
