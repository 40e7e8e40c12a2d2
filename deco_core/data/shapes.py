"""ShapesWorld: a deterministic synthetic image-text corpus for the tiny-scale pipeline (public entry point).

Training generators (`caption_samples`, `instruct_samples`) and the eval splits (`eval_*_samples`, in
shapes_eval.py) yield samples in the shared schema. Images are drawn from an RNG seeded by
(seed, split, task stream, sample index): the same call gives byte-identical PNGs, any other split or task
gives unrelated images, so train and eval never share an image; `start` lets workers generate disjoint
index ranges in parallel. The vocabulary is closed: `shapes_vocabulary` lists every word the corpus emits
under `SHAPES_WORD_PATTERN`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from deco_core.data.prompts import IMAGE_TOKEN, SHORT_ANSWER_SUFFIX
from deco_core.data.shapes_eval import (
    POPE_SPLITS,
    eval_caption_samples,
    eval_mc_samples,
    eval_pope_samples,
    eval_rec_samples,
    eval_vqa_samples,
)
from deco_core.data.shapes_scene import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    ShapesConfig,
    iter_scenes,
    popular_combos,
    render_png,
    resolve_seed,
    sample_rngs,
    sample_scene,
    scene_sample,
)
from deco_core.data.shapes_text import (
    QA,
    build_qa,
    caption,
    template_texts,
)

__all__ = [
    "COLOURS", "POSITIONS", "POPE_SPLITS", "SHAPES", "SIZES", "SHAPES_GENERATORS", "SHAPES_WORD_PATTERN",
    "Scene", "ShapeObject", "ShapesConfig", "caption_samples", "eval_caption_samples", "eval_mc_samples",
    "eval_pope_samples", "eval_rec_samples", "eval_vqa_samples", "instruct_samples", "make_corpus_text",
    "popular_combos", "render_png", "sample_rngs", "sample_scene", "shapes_vocabulary", "split_words",
]  # fmt: skip

SHAPES_WORD_PATTERN = re.escape(IMAGE_TOKEN) + r"|\d+\.\d+|\d+|[A-Za-z]+(?:'[A-Za-z]+)?|[^\sA-Za-z0-9]"
"""Word split assumed by the vocabulary: '<image>', decimals (0.12) and integers whole, words with an
inner apostrophe (option's) whole, every other non-space character alone. Case-sensitive."""
_WORD_RE = re.compile(SHAPES_WORD_PATTERN)

# Question types of an instruct conversation and their relative frequency.
INSTRUCT_MIX: dict[str, float] = {
    "colour": 2.0, "shape": 2.0, "size": 1.0, "position": 2.0,
    "count": 1.5, "exists": 1.5, "ground": 2.0, "describe": 1.0,
}  # fmt: skip


def split_words(text: str) -> list[str]:
    """Split `text` into words with SHAPES_WORD_PATTERN."""
    return _WORD_RE.findall(text)


def caption_samples(
    n: int, seed: int | None = None, split: str = "train", config: ShapesConfig | None = None, start: int = 0
) -> Iterator[dict[str, Any]]:
    """Caption samples (task 'caption', `plain` layout): human '<image>', gpt the canonical caption."""
    config = config or ShapesConfig()
    seed = resolve_seed(seed, config)
    for index, scene, _ in iter_scenes("caption", n, seed, split, config, start):
        turns = [{"from": "human", "value": IMAGE_TOKEN}, {"from": "gpt", "value": caption(scene)}]
        yield scene_sample("caption", "caption", split, seed, index, scene, turns)


def _conversation_qas(scene: Scene, rng: np.random.Generator, config: ShapesConfig) -> list[QA]:
    """2-4 distinct questions (config.min_turns..max_turns), at most one description."""
    names = list(INSTRUCT_MIX)
    weights = np.asarray(list(INSTRUCT_MIX.values()))
    turns = int(rng.integers(config.min_turns, config.max_turns + 1))
    qas: list[QA] = []
    for _ in range(turns * 8):
        if len(qas) == turns:
            break
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        qa = build_qa(name, scene, rng, config)
        if qa is None or any(q.question == qa.question or q.qtype == qa.qtype == "describe" for q in qas):
            continue
        qas.append(qa)
    return qas


def instruct_samples(
    n: int, seed: int | None = None, split: str = "train", config: ShapesConfig | None = None, start: int = 0
) -> Iterator[dict[str, Any]]:
    """Multi-turn instruction samples (task 'instruct') mixing attribute, spatial, count, existence,
    grounding and description questions; `<image>` opens the first human turn."""
    config = config or ShapesConfig()
    seed = resolve_seed(seed, config)
    for index, scene, rng in iter_scenes("instruct", n, seed, split, config, start):
        qas = _conversation_qas(scene, rng, config)
        turns: list[dict[str, str]] = []
        for k, qa in enumerate(qas):
            question = qa.question
            if qa.short and rng.random() < config.short_answer_suffix_prob:
                question = f"{question}\n{SHORT_ANSWER_SUFFIX}"
            if k == 0:
                question = f"{IMAGE_TOKEN}\n{question}"
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": qa.answer}]
        meta = {"question_types": [qa.qtype for qa in qas], "targets": [qa.target for qa in qas]}
        yield scene_sample("instruct", "instruct", split, seed, index, scene, turns, meta)


Generator = Callable[..., Iterator[dict[str, Any]]]
# fmt: off
SHAPES_GENERATORS: dict[str, tuple[Generator, str]] = {   # name -> (generator, default split)
    "caption":      (caption_samples, "train"),
    "instruct":     (instruct_samples, "train"),
    "vqa":          (eval_vqa_samples, "val"),
    "pope":         (eval_pope_samples, "val"),
    "mc":           (eval_mc_samples, "val"),
    "rec":          (eval_rec_samples, "val"),
    "caption_eval": (eval_caption_samples, "val"),
}
# fmt: on


def shapes_vocabulary() -> list[str]:
    """Every word (under SHAPES_WORD_PATTERN, case-sensitive) any ShapesWorld generator can emit, sorted.

    Includes '<image>', the digits 0-9, every two-decimal number 0.00..1.00, punctuation and option letters.
    """
    words: set[str] = set()
    for text in template_texts():
        words.update(split_words(re.sub(r"\{\w+\}", " ", text)))
    words.update(str(i) for i in range(10))
    words.update(f"{k // 100}.{k % 100:02d}" for k in range(101))
    words.update("[],.?:")
    return sorted(words)


def sample_text(sample: dict[str, Any]) -> str:
    """All text of one sample: conversation turns, then answers and choices when present."""
    record = sample["json"]
    parts = [turn["value"] for turn in record["conversations"]]
    parts += list(record.get("answers", [])) + list(record.get("choices", {}).values())
    return "\n".join(parts)


def make_corpus_text(n: int, seed: int = 0, config: ShapesConfig | None = None) -> Iterator[str]:
    """`n` texts drawn round-robin from every generator (default splits), e.g. to build a tokenizer."""
    per_generator = -(-n // len(SHAPES_GENERATORS)) if n > 0 else 0
    streams = [gen(per_generator, seed, split, config) for gen, split in SHAPES_GENERATORS.values()]
    interleaved = (s for group in itertools.zip_longest(*streams) for s in group if s is not None)
    for sample in itertools.islice(interleaved, n):
        yield sample_text(sample)
