"""ShapesWorld eval splits in the style of public benchmarks: VQA, POPE, MMBench-style MC, REC, captions.

Each sample carries the eval fields of the sample schema (`answers`, `split`, `question_id`, plus `label`,
`choices` or `bbox` where they apply) and a canonical gpt turn. Images come from a (seed, split, task)
stream of their own, so an eval split never shares an image with a training split.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from deco_core.data.prompts import (
    DESCRIBE_PROMPT,
    IMAGE_TOKEN,
    MC_SUFFIX,
    POPE_TEMPLATE,
    SHORT_ANSWER_SUFFIX,
    rec_prompt,
)
from deco_core.data.shapes_scene import (
    COLOURS,
    POSITIONS,
    SHAPES,
    Scene,
    ShapeObject,
    ShapesConfig,
    check_name,
    iter_scenes,
    popular_combos,
    resolve_seed,
    sample_rngs,
    sample_scene,
    scene_sample,
)
from deco_core.data.shapes_text import (
    ANSWER_SYNONYMS,
    BOX_SEP,
    MC_LETTERS,
    POSITION_PHRASES,
    QA,
    QUESTION_TEMPLATES,
    article,
    box_text,
    build_qa,
    caption,
    caption_references,
    pick_target,
    refer,
)

POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
# (question type, spatial) -> weight; spatial types name the object by position only.
VQA_MIX: dict[tuple[str, bool], float] = {
    ("colour", False): 1.0, ("shape", False): 1.0, ("size", False): 0.5, ("position", False): 1.0,
    ("colour", True): 1.5, ("shape", True): 1.5, ("count", False): 1.0, ("exists", False): 1.0,
}  # fmt: skip
ANSWER_TYPES: dict[str, str] = {"exists": "yes/no", "count": "number"}
MC_KINDS: tuple[str, ...] = ("colour", "which", "position", "count")
# question type (spatial_ prefix dropped) -> MMBench-like category
MC_CATEGORIES: dict[str, str] = {
    "colour": "attribute_recognition", "which": "spatial_relationship",
    "position": "object_localization", "count": "counting",
}  # fmt: skip


def _short_prompt(question: str) -> str:
    return f"{IMAGE_TOKEN}\n{question}\n{SHORT_ANSWER_SUFFIX}"


def _turns(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]


def vqa_answers(answer: str, rng: np.random.Generator) -> list[str]:
    """Ten VQAv2-style annotator answers: the canonical one (first, >= 8 times) plus 0-2 synonyms."""
    synonyms = ANSWER_SYNONYMS.get(answer, ())
    k = int(rng.integers(0, 3)) if synonyms else 0
    return [answer] * (10 - k) + [synonyms[j % len(synonyms)] for j in range(k)]


def _vqa_qa(scene: Scene, rng: np.random.Generator, config: ShapesConfig) -> QA:
    kinds = list(VQA_MIX)
    weights = np.asarray(list(VQA_MIX.values()))
    name, spatial = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    qa = build_qa(name, scene, rng, config, spatial=spatial)
    if qa is None:  # 'Where is ...' fails only when every object has an exact attribute twin
        qa = build_qa("colour", scene, rng, config, spatial=True)
    assert qa is not None
    return qa


def eval_vqa_samples(
    n: int, seed: int | None = None, split: str = "val", config: ShapesConfig | None = None, start: int = 0
) -> Iterator[dict[str, Any]]:
    """Open short-answer VQA (task 'vqa'): answers = 10 annotator strings, answers[0] canonical."""
    config = config or ShapesConfig()
    seed = resolve_seed(seed, config)
    for index, scene, rng in iter_scenes("vqa", n, seed, split, config, start):
        qa = _vqa_qa(scene, rng, config)
        base = qa.qtype.removeprefix("spatial_")
        meta = {
            "question_type": qa.qtype,
            "answer_type": ANSWER_TYPES.get(base, "other"),
            "target": qa.target,
        }
        fields = {
            "answers": vqa_answers(qa.answer, rng),
            "split": split,
            "question_id": f"vqa-{split}-{seed}-{index}",
        }
        yield scene_sample(
            "vqa",
            "vqa",
            split,
            seed,
            index,
            scene,
            _turns(_short_prompt(qa.question), qa.answer),
            meta,
            fields,
        )


def pope_negative(
    scene: Scene, rng: np.random.Generator, pope_split: str, config: ShapesConfig
) -> tuple[str, str]:
    """An absent (colour, shape) combo: random / among the 3 most popular / one-attribute twin of a present one."""
    present = {(o.colour, o.shape) for o in scene.objects}
    if pope_split == "random":
        pool = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    elif pope_split == "popular":
        pool = [combo for combo in popular_combos(config) if combo not in present][:3]
    elif pope_split == "adversarial":
        twins = [(c2, s) for c, s in sorted(present) for c2 in COLOURS if c2 != c]
        twins += [(c, s2) for c, s in sorted(present) for s2 in SHAPES if s2 != s]
        pool = sorted({t for t in twins if t not in present})
    else:
        raise ValueError(f"unknown pope_split {pope_split!r}; valid: {', '.join(POPE_SPLITS)}")
    return pool[int(rng.integers(len(pool)))]


def eval_pope_samples(
    n: int, seed: int | None = None, split: str = "val", config: ShapesConfig | None = None, start: int = 0
) -> Iterator[dict[str, Any]]:
    """POPE yes/no existence (task 'pope'): 6 questions per image, a (yes, no) pair for each pope_split.

    Sample i asks about image i // 6 with pope_split POPE_SPLITS[(i % 6) // 2] and label yes iff i is even,
    so every pope_split is exactly balanced whenever `start` and `n` are multiples of 6.
    """
    config = config or ShapesConfig()
    seed = resolve_seed(seed, config)
    check_name("split", split)
    if n < 0 or start < 0:
        raise ValueError(f"n={n}, start={start}: expected non-negative ints")
    scenes: dict[int, Scene] = {}
    for index in range(start, start + n):
        image_index, pope_split = index // 6, POPE_SPLITS[(index % 6) // 2]
        if image_index not in scenes:
            scenes = {image_index: sample_scene(sample_rngs(seed, split, "pope", image_index)[0], config)}
        scene = scenes[image_index]
        rng = sample_rngs(seed, split, f"pope_{pope_split}", image_index)[1]
        present = sorted({(o.colour, o.shape) for o in scene.objects})
        positive = present[int(rng.integers(len(present)))]
        negative = pope_negative(scene, rng, pope_split, config)
        label = "yes" if index % 2 == 0 else "no"
        colour, shape = positive if label == "yes" else negative
        question = POPE_TEMPLATE.format(a=article(colour), colour=colour, shape=shape)
        meta = {
            "pope_split": pope_split,
            "image_index": image_index,
            "question_type": "exists",
            "object": f"{colour} {shape}",
        }
        fields = {
            "answers": [label],
            "label": label,
            "split": split,
            "question_id": f"pope-{split}-{seed}-{index}",
        }
        yield scene_sample(
            "pope", "pope", split, seed, index, scene, _turns(_short_prompt(question), label), meta, fields
        )


def _distinct(first: list[str], fallback: list[str], answer: str, rng: np.random.Generator) -> list[str]:
    """Three distractors != answer: shuffled `first` (hard ones from the scene), then shuffled `fallback`."""
    out: list[str] = []
    for pool in (first, fallback):
        for j in rng.permutation(len(pool)):
            if pool[j] != answer and pool[j] not in out and len(out) < 3:
                out.append(pool[j])
    return out


def _mc_question(
    kind: str, scene: Scene, rng: np.random.Generator, config: ShapesConfig
) -> tuple[QA, list[str]]:
    """(question with canonical answer, 3 distractor option texts) for one MC kind."""
    others = list(scene.objects)
    if kind == "which":

        def combo(o: ShapeObject) -> str:
            return f"{o.colour} {o.shape}"

        target = pick_target(scene, rng, combo)
        where = POSITION_PHRASES[scene.objects[target].position]
        qa = QA(
            "which", QUESTION_TEMPLATES["which"][0].format(where=where), combo(scene.objects[target]), target
        )
        return qa, _distinct(
            [combo(o) for o in others], [f"{c} {s}" for c in COLOURS for s in SHAPES], qa.answer, rng
        )
    if kind == "position":
        qa = build_qa("position", scene, rng, config)
        if qa is not None:
            return qa, _distinct([o.position for o in others], list(POSITIONS), qa.answer, rng)
        kind = "colour"
    if kind == "colour":
        qa = build_qa("colour", scene, rng, config)
        assert qa is not None
        return qa, _distinct([], list(COLOURS), qa.answer, rng)
    n = len(scene.objects)
    qa = QA("count", QUESTION_TEMPLATES["count_all"][0], str(n))
    return qa, _distinct([], [str(k) for k in range(10) if abs(k - n) <= 3], qa.answer, rng)


def eval_mc_samples(
    n: int, seed: int | None = None, split: str = "val", config: ShapesConfig | None = None, start: int = 0
) -> Iterator[dict[str, Any]]:
    """MMBench-style A-D multiple choice (task 'mc'): choices letter -> text, answers = [letter]."""
    config = config or ShapesConfig()
    seed = resolve_seed(seed, config)
    for index, scene, rng in iter_scenes("mc", n, seed, split, config, start):
        kind = MC_KINDS[int(rng.integers(len(MC_KINDS)))]
        qa, distractors = _mc_question(kind, scene, rng, config)
        options = [qa.answer, *distractors]
        order = [int(j) for j in rng.permutation(len(options))]
        choices = {MC_LETTERS[k]: options[j] for k, j in enumerate(order)}
        letter = MC_LETTERS[order.index(0)]
        lines = [f"{IMAGE_TOKEN}\n{qa.question}", *(f"{k}. {v}" for k, v in choices.items()), MC_SUFFIX]
        meta = {
            "question_type": qa.qtype,
            "category": MC_CATEGORIES[qa.qtype.removeprefix("spatial_")],
            "target": qa.target,
            "answer_text": qa.answer,
        }
        fields = {
            "answers": [letter],
            "choices": choices,
            "split": split,
            "question_id": f"mc-{split}-{seed}-{index}",
        }
        yield scene_sample(
            "mc", "mc", split, seed, index, scene, _turns("\n".join(lines), letter), meta, fields
        )


def eval_rec_samples(
    n: int, seed: int | None = None, split: str = "val", config: ShapesConfig | None = None, start: int = 0
) -> Iterator[dict[str, Any]]:
    """Referring expression comprehension (task 'rec'): bbox = normalised xyxy GT, answers = [box text]."""
    config = config or ShapesConfig()
    seed = resolve_seed(seed, config)
    for index, scene, rng in iter_scenes("rec", n, seed, split, config, start):
        target = int(rng.integers(len(scene.objects)))
        spatial = bool(rng.random() < config.spatial_prob)
        ref = refer(scene, target, {"shape", "colour", "size", "position"}, spatial=spatial)
        answer = box_text(scene.norm_box(target), config.coord_step_hundredths, BOX_SEP)
        prompt = f"{IMAGE_TOKEN}\n{rec_prompt(ref)}"
        meta = {
            "question_type": "spatial_ground" if spatial else "ground",
            "expression": ref,
            "target": target,
        }
        fields = {
            "answers": [answer],
            "bbox": scene.norm_box(target),
            "split": split,
            "question_id": f"rec-{split}-{seed}-{index}",
        }
        yield scene_sample("rec", "rec", split, seed, index, scene, _turns(prompt, answer), meta, fields)


def eval_caption_samples(
    n: int, seed: int | None = None, split: str = "val", config: ShapesConfig | None = None, start: int = 0
) -> Iterator[dict[str, Any]]:
    """Captioning (task 'caption_eval'): answers = 5 reference captions, the canonical one first."""
    config = config or ShapesConfig()
    seed = resolve_seed(seed, config)
    for index, scene, _ in iter_scenes("caption_eval", n, seed, split, config, start):
        fields = {
            "answers": caption_references(scene),
            "split": split,
            "question_id": f"caption-{split}-{seed}-{index}",
        }
        turns = _turns(f"{IMAGE_TOKEN}\n{DESCRIBE_PROMPT}", caption(scene))
        yield scene_sample(
            "caption_eval",
            "caption_eval",
            split,
            seed,
            index,
            scene,
            turns,
            {"question_type": "describe"},
            fields,
        )
