"""The ShapesWorld closed vocabulary and generator config (`ShapesConfig`), free of numpy, PIL and torch.

The config schema (``deco_core.config_schema``) reads this module, so composing a config imports no image or
tensor library; scene sampling and rendering live in ``shapes_scene.py``, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
# Row-major 3x3 grid: cell index = 3 * row + col.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip

# Saturated object colours (channel spread >= 125) vs greyish backgrounds (spread <= 2 * tint): never equal.
# fmt: off
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red":    (215, 40, 40),
    "green":  (40, 165, 60),
    "blue":   (40, 80, 215),
    "yellow": (235, 200, 30),
    "purple": (145, 55, 185),
    "orange": (240, 130, 20),
}
# fmt: on


@dataclass
class ShapesConfig:
    """How ShapesWorld scenes, images and questions are drawn."""

    image_size: int = 96
    """Side of the square image, pixels."""
    min_objects: int = 1
    """Fewest objects per scene (>= 1)."""
    max_objects: int = 4
    """Most objects per scene (<= 9: one per grid cell)."""
    seed: int = 0
    """Default seed when a generator is called without one."""
    small_frac: tuple[float, float] = (0.12, 0.17)
    """Range of a small object's side, as a fraction of image_size."""
    large_frac: tuple[float, float] = (0.24, 0.31)
    """Range of a large object's side; must fit a grid cell (1/3 of the image)."""
    colour_jitter: int = 12
    """Per-channel uniform jitter added to an object's canonical colour."""
    background_grey: tuple[int, int] = (150, 235)
    """Range of the background grey level."""
    background_tint: int = 10
    """Per-channel jitter around the background grey (keeps it greyish)."""
    popularity_skew: float = 0.5
    """Colours and shapes are drawn with weight (rank + 1) ** -skew, so POPE 'popular' combos exist."""
    coord_step: float = 0.01
    """Grid of the box coordinates written in text (0.01 = two decimals; e.g. 0.05 for tiny models)."""
    spatial_prob: float = 0.3
    """Probability that a question names its object by position only ("the shape at the top left")."""
    short_answer_suffix_prob: float = 0.5
    """Probability that an instruct short-answer question ends with the LLaVA-1.5 short-answer suffix."""
    min_turns: int = 2
    """Fewest question/answer rounds in an instruct conversation."""
    max_turns: int = 4
    """Most question/answer rounds in an instruct conversation."""

    def __post_init__(self) -> None:
        self.small_frac = tuple(float(v) for v in self.small_frac)  # type: ignore[assignment]
        self.large_frac = tuple(float(v) for v in self.large_frac)  # type: ignore[assignment]
        self.background_grey = tuple(int(v) for v in self.background_grey)  # type: ignore[assignment]
        self._validate()

    def _validate(self) -> None:
        def bad(field: str, value: Any, expected: str) -> ValueError:
            return ValueError(f"ShapesConfig.{field}={value!r}: expected {expected}")

        if self.image_size < 24:
            raise bad("image_size", self.image_size, "an int >= 24")
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise bad("min_objects/max_objects", (self.min_objects, self.max_objects), "1 <= min <= max <= 9")
        if self.seed < 0:
            raise bad("seed", self.seed, "a non-negative int")
        for name in ("small_frac", "large_frac"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise bad(name, (lo, hi), "0 < low <= high")
        if self.small_frac[1] >= self.large_frac[0]:
            raise bad(
                "small_frac", self.small_frac, f"below large_frac {self.large_frac} (distinct size classes)"
            )
        if round(self.large_frac[1] * self.image_size) > self.image_size // 3:
            raise bad(
                "large_frac",
                self.large_frac,
                f"large objects fitting a grid cell of {self.image_size // 3}px",
            )
        if round(self.small_frac[0] * self.image_size) < 4:
            raise bad("small_frac", self.small_frac, "small objects of at least 4px")
        lo, hi = self.background_grey
        if not 0 <= lo <= hi <= 255 or self.background_tint < 0 or self.colour_jitter < 0:
            raise bad("background_grey", self.background_grey, "0 <= low <= high <= 255, tint/jitter >= 0")
        min_spread = min(max(c) - min(c) for c in COLOUR_RGB.values())
        if min_spread - 2 * self.colour_jitter <= 2 * self.background_tint:
            raise bad("colour_jitter", self.colour_jitter, "small enough that objects never look greyish")
        step_h = round(self.coord_step * 100)
        if step_h < 1 or abs(step_h - self.coord_step * 100) > 1e-9 or 100 % step_h:
            raise bad(
                "coord_step", self.coord_step, "a multiple of 0.01 that divides 1 (0.01, 0.02, 0.05, 0.1...)"
            )
        for name in ("spatial_prob", "short_answer_suffix_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, getattr(self, name), "a probability in [0, 1]")
        if not 1 <= self.min_turns <= self.max_turns:
            raise bad("min_turns/max_turns", (self.min_turns, self.max_turns), "1 <= min <= max")

    @property
    def coord_step_hundredths(self) -> int:
        """The text box grid in hundredths (0.05 -> 5)."""
        return round(self.coord_step * 100)
