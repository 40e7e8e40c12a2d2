"""ShapesWorld language: prompt templates, referring expressions, captions, box text and question builders.

Every sentence the corpus can emit is built here from the closed vocabulary, so `shapes_vocabulary` can
enumerate all words. Referring expressions always pick out exactly one object; "spatial" questions name
their object by position only, so answering them needs where things are, not just what is there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from deco_core.data.prompts import (
    DESCRIBE_PROMPT,
    IMAGE_TOKEN,
    MC_SUFFIX,
    POPE_TEMPLATE,
    REC_PROMPT,
    SHORT_ANSWER_SUFFIX,
)
from deco_core.data.shapes_scene import COLOURS, POSITIONS, SHAPES, SIZES, Scene, ShapeObject, ShapesConfig

MC_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}

# fmt: off
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left",       "top": "at the top",       "top right": "at the top right",
    "left": "on the left",               "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
# Alternative answers a VQA annotator could give; the canonical answer stays the majority.
ANSWER_SYNONYMS: dict[str, tuple[str, ...]] = {
    "purple": ("violet",), "large": ("big",), "small": ("little",), "center": ("middle",),
    "top left": ("upper left",), "top right": ("upper right",),
    "bottom left": ("lower left",), "bottom right": ("lower right",),
    "top": ("top middle",), "bottom": ("bottom middle",), "left": ("middle left",), "right": ("middle right",),
    **{str(i): (NUMBER_WORDS[i],) for i in range(10)},
}
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour":       ("What colour is the {ref}?", "What is the colour of the {ref}?"),
    "shape":        ("What shape is the {ref}?", "What kind of shape is the {ref}?"),
    "size":         ("What size is the {ref}?", "Is the {ref} small or large?"),
    "position":     ("Where is the {ref}?", "Where is the {ref} located?"),
    "count_all":    ("How many shapes are there?", "How many shapes are in the image?"),
    "count_colour": ("How many {colour} shapes are there?",),
    "count_shape":  ("How many {plural} are there?",),
    "exists":       ("Is there {a} {colour} {shape}?", "Is there {a} {colour} {shape} in the image?"),
    "ground":       ("Give the bounding box of the {ref}.", REC_PROMPT),
    "describe":     (DESCRIBE_PROMPT, "Give a short description of the image."),
    "which":        ("Which object is {where}?",),
}
CAPTION_PREFIXES: tuple[str, ...] = ("an image of ", "{count} {noun}: ")
# fmt: on


@dataclass(frozen=True)
class QA:
    """One question with its canonical answer; `target` is the object asked about, if any."""

    qtype: str
    question: str
    answer: str
    target: int | None = None
    short: bool = True


def article(word: str) -> str:
    """'an' before a vowel sound, else 'a'."""
    return "an" if word[:1] in "aeiou" else "a"


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One element of `options`, uniformly."""
    return options[int(rng.integers(len(options)))]


BOX_SEP = ","
"""ShapesWorld writes boxes without spaces ('[0.15,0.40,0.35,0.60]'): every coordinate then follows a bracket or a
comma, so it is one and the same token in each of the four positions. Converted public data keeps LLaVA's ', '."""


def box_text(box: Sequence[float], step_hundredths: int = 1, sep: str = ", ") -> str:
    """'[x1, y1, x2, y2]' with two decimals, each value rounded half up to the `step_hundredths` / 100 grid;
    `sep` joins the four values (ShapesWorld uses BOX_SEP)."""
    parts = []
    for v in box:
        k = min(max(math.floor(float(v) * 100 / step_hundredths + 0.5) * step_hundredths, 0), 100)  # half up
        parts.append(f"{k // 100}.{k % 100:02d}")
    return "[" + sep.join(parts) + "]"


# ---------------------------------------------------------------- referring expressions and captions
_ATTR_RANK = {"shape": 0, "colour": 1, "size": 2}


def _attr_subsets(allowed: set[str]) -> list[tuple[str, ...]]:
    attrs = sorted((a for a in allowed if a in _ATTR_RANK), key=_ATTR_RANK.__getitem__)
    subsets = [c for r in range(1, len(attrs) + 1) for c in itertools.combinations(attrs, r)]
    return sorted(subsets, key=lambda c: (len(c), [_ATTR_RANK[a] for a in c]))


def _phrase(obj: ShapeObject, attrs: Sequence[str], with_position: bool) -> str:
    words = [obj.size] if "size" in attrs else []
    words += [obj.colour] if "colour" in attrs else []
    words.append(obj.shape if "shape" in attrs else "shape")
    if with_position:
        words.append(POSITION_PHRASES[obj.position])
    return " ".join(words)


def matches(scene: Scene, target: int, attrs: Sequence[str]) -> list[int]:
    """Indices of objects equal to object `target` on every attribute in `attrs`."""
    t = scene.objects[target]
    return [i for i, o in enumerate(scene.objects) if all(o.attr(a) == t.attr(a) for a in attrs)]


def refer(scene: Scene, target: int, allowed: set[str], spatial: bool = False) -> str | None:
    """Shortest unique expression (no article) for object `target` using only `allowed` attributes.

    `spatial=True` names it by position alone ("shape at the top left"). Position is added when the
    allowed attributes cannot single it out; None when that is still impossible.
    """
    obj = scene.objects[target]
    if spatial:
        return _phrase(obj, (), with_position=True)
    for attrs in _attr_subsets(allowed):
        if len(matches(scene, target, attrs)) == 1:
            return _phrase(obj, attrs, with_position=False)
    if "position" in allowed:
        return _phrase(obj, tuple(a for a in allowed if a in _ATTR_RANK), with_position=True)
    return None


def _object_words(obj: ShapeObject, with_size: bool) -> str:
    words = [obj.size, obj.colour, obj.shape] if with_size else [obj.colour, obj.shape]
    return f"{article(words[0])} {' '.join(words)} {POSITION_PHRASES[obj.position]}"


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
    """Canonical caption: every object with size, colour, shape and position, in reading order."""
    return _join([_object_words(o, True) for o in scene.objects]) + "."


def caption_references(scene: Scene) -> list[str]:
    """Five reference captions (the canonical one first) for caption evaluation."""
    body = _join([_object_words(o, True) for o in scene.objects])
    n = len(scene.objects)
    counted = CAPTION_PREFIXES[1].format(count=NUMBER_WORDS[n], noun="shape" if n == 1 else "shapes")
    return [
        body + ".",
        counted + body + ".",
        _join([_object_words(o, True) for o in reversed(scene.objects)]) + ".",
        CAPTION_PREFIXES[0] + body + ".",
        _join([_object_words(o, False) for o in scene.objects]) + ".",
    ]


# ---------------------------------------------------------------- question builders
def pick_target(
    scene: Scene, rng: np.random.Generator, answer_of: Callable[[ShapeObject], str] | None
) -> int:
    """A target object. With `answer_of`, the answer value is drawn uniformly among the distinct values in
    the scene first (balanced answers: guessing the most common value scores at most 1 / #values)."""
    objs = scene.objects
    if answer_of is None:
        return int(rng.integers(len(objs)))
    values = sorted({answer_of(o) for o in objs})
    value = values[int(rng.integers(len(values)))]
    candidates = [i for i, o in enumerate(objs) if answer_of(o) == value]
    return candidates[int(rng.integers(len(candidates)))]


def _attribute_qa(qtype: str, scene: Scene, rng: np.random.Generator, spatial: bool) -> QA:
    def answer_of(o: ShapeObject) -> str:
        return o.attr(qtype)

    objs = scene.objects
    if spatial and all(answer_of(o) == answer_of(objs[0]) for o in objs):
        spatial = False  # position-only wording would be answerable without looking at positions
    target = pick_target(scene, rng, answer_of if spatial else None)
    allowed = {"shape", "colour", "size", "position"} - {qtype}
    ref = refer(scene, target, allowed, spatial=spatial)
    assert ref is not None  # position is allowed, so a unique expression always exists
    kind = f"spatial_{qtype}" if spatial else qtype
    return QA(
        kind, pick(rng, QUESTION_TEMPLATES[qtype]).format(ref=ref), answer_of(scene.objects[target]), target
    )


def colour_qa(scene: Scene, rng: np.random.Generator, spatial: bool = False) -> QA:
    return _attribute_qa("colour", scene, rng, spatial)


def shape_qa(scene: Scene, rng: np.random.Generator, spatial: bool = False) -> QA:
    return _attribute_qa("shape", scene, rng, spatial)


def size_qa(scene: Scene, rng: np.random.Generator, spatial: bool = False) -> QA:
    return _attribute_qa("size", scene, rng, spatial)


def position_qa(scene: Scene, rng: np.random.Generator, spatial: bool = False) -> QA | None:
    """'Where is the red circle?' -> 'top left'; None if no object is unique by its attributes."""
    order = [int(i) for i in rng.permutation(len(scene.objects))]
    for target in order:
        ref = refer(scene, target, {"shape", "colour", "size"})
        if ref is not None:
            question = pick(rng, QUESTION_TEMPLATES["position"]).format(ref=ref)
            return QA("position", question, scene.objects[target].position, target)
    return None


def count_qa(scene: Scene, rng: np.random.Generator, spatial: bool = False) -> QA:
    """How many shapes / colour shapes / shapes of a kind; the answer is a digit."""
    kind = pick(rng, ("count_all", "count_colour", "count_shape"))
    template = pick(rng, QUESTION_TEMPLATES[kind])
    present = scene.objects[int(rng.integers(len(scene.objects)))]
    use_present = rng.random() < 0.75
    if kind == "count_all":
        return QA("count", template, str(len(scene.objects)))
    if kind == "count_colour":
        colour = present.colour if use_present else pick(rng, COLOURS)
        n = sum(o.colour == colour for o in scene.objects)
        return QA("count", template.format(colour=colour), str(n))
    shape = present.shape if use_present else pick(rng, SHAPES)
    return QA(
        "count", template.format(plural=PLURALS[shape]), str(sum(o.shape == shape for o in scene.objects))
    )


def exists_qa(scene: Scene, rng: np.random.Generator, spatial: bool = False) -> QA:
    """'Is there a green triangle?' -> yes/no with equal probability."""
    present = {(o.colour, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        colour, shape = sorted(present)[int(rng.integers(len(present)))]
        answer = "yes"
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        colour, shape = absent[int(rng.integers(len(absent)))]
        answer = "no"
    question = pick(rng, QUESTION_TEMPLATES["exists"]).format(a=article(colour), colour=colour, shape=shape)
    return QA("exists", question, answer)


def ground_qa(scene: Scene, rng: np.random.Generator, spatial: bool = False, step_hundredths: int = 1) -> QA:
    """'Give the bounding box of the small red circle.' -> '[0.12, 0.40, 0.35, 0.62]'."""
    target = int(rng.integers(len(scene.objects)))
    ref = refer(scene, target, {"shape", "colour", "size", "position"}, spatial=spatial)
    question = pick(rng, QUESTION_TEMPLATES["ground"]).format(ref=ref)
    return QA("ground", question, box_text(scene.norm_box(target), step_hundredths, BOX_SEP), target, short=False)


def describe_qa(scene: Scene, rng: np.random.Generator, spatial: bool = False) -> QA:
    return QA("describe", pick(rng, QUESTION_TEMPLATES["describe"]), caption(scene), short=False)


QABuilder = Callable[..., "QA | None"]
# fmt: off
QA_BUILDERS: dict[str, tuple[QABuilder, bool]] = {   # name -> (builder, may be spatial)
    "colour":   (colour_qa, True),
    "shape":    (shape_qa, True),
    "size":     (size_qa, True),
    "position": (position_qa, False),
    "count":    (count_qa, False),
    "exists":   (exists_qa, False),
    "ground":   (ground_qa, True),
    "describe": (describe_qa, False),
}
# fmt: on


def build_qa(
    name: str, scene: Scene, rng: np.random.Generator, config: ShapesConfig, spatial: bool | None = None
) -> QA | None:
    """Run builder `name`; `spatial=None` draws it with `config.spatial_prob` for builders that support it."""
    if name not in QA_BUILDERS:
        raise KeyError(f"unknown question type {name!r}; valid: {', '.join(QA_BUILDERS)}")
    builder, can_be_spatial = QA_BUILDERS[name]
    if spatial is None:
        spatial = can_be_spatial and bool(rng.random() < config.spatial_prob)
    if name == "ground":
        return ground_qa(scene, rng, spatial, config.coord_step_hundredths)
    return builder(scene, rng, spatial)


def template_texts() -> list[str]:
    """Every fixed text the corpus uses (placeholders still in), for vocabulary building."""
    texts = [IMAGE_TOKEN, SHORT_ANSWER_SUFFIX, MC_SUFFIX, REC_PROMPT, POPE_TEMPLATE, *CAPTION_PREFIXES]
    texts += [t for group in QUESTION_TEMPLATES.values() for t in group]
    texts += list(POSITION_PHRASES.values()) + [s for group in ANSWER_SYNONYMS.values() for s in group]
    texts += list(SHAPES) + list(PLURALS.values()) + list(COLOURS) + list(SIZES) + list(POSITIONS)
    texts += list(NUMBER_WORDS) + list(MC_LETTERS) + ["a an shape shapes and yes no"]
    return texts
