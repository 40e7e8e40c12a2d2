"""ShapesWorld: determinism, split separation, geometry, POPE balance, unambiguous questions, vocabulary."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from functools import cache
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deco_core.data.shapes import (
    COLOURS,
    POPE_SPLITS,
    SHAPES,
    SHAPES_GENERATORS,
    SHAPES_WORD_PATTERN,
    SIZES,
    ShapesConfig,
    caption_samples,
    eval_pope_samples,
    eval_rec_samples,
    eval_vqa_samples,
    instruct_samples,
    make_corpus_text,
    popular_combos,
    shapes_vocabulary,
    split_words,
)
from deco_core.data.shapes_text import POSITION_PHRASES, box_text

SUFFIX = "Answer the question using a single word or phrase."
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


@cache
def _samples(name: str, n: int = 300, split: str | None = None) -> tuple[dict[str, Any], ...]:
    generator, default_split = SHAPES_GENERATORS[name]
    return tuple(generator(n, 0, split or default_split))


def _digest(sample: dict[str, Any]) -> str:
    return hashlib.sha256(sample["png"]).hexdigest()


def _dump(sample: dict[str, Any]) -> str:
    return json.dumps(sample["json"], sort_keys=True) + sample["__key__"]


def _select(objects: list[dict[str, Any]], text: str) -> list[int]:
    """Indices of objects consistent with every attribute word / position phrase found in `text`."""
    words = set(re.findall(r"[a-z]+", text))
    phrase = max(
        (p for p in POSITION_PHRASES.values() if re.search(rf"\b{p}\b", text)), key=len, default=None
    )
    keep = []
    for i, o in enumerate(objects):
        ok = all(
            o[attr] in words
            for attr, vocab in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES))
            if words & set(vocab)
        )
        if phrase is not None:
            ok = ok and POSITION_PHRASES[o["position"]] == phrase
        if ok:
            keep.append(i)
    return keep


def test_same_seed_gives_byte_identical_samples() -> None:
    """Every generator yields byte-identical PNGs and equal json for the same seed, and new images for another."""
    for name, (generator, split) in SHAPES_GENERATORS.items():
        first, again = list(generator(6, 3, split)), list(generator(6, 3, split))
        assert [s["png"] for s in first] == [s["png"] for s in again], name
        assert [_dump(s) for s in first] == [_dump(s) for s in again], name
        other = {_digest(s) for s in generator(6, 4, split)}
        assert not other & {_digest(s) for s in first}, name


def test_start_offset_continues_the_same_sequence() -> None:
    """Generating from `start` reproduces the tail of a longer run, so workers can split index ranges."""
    full = list(instruct_samples(5, 1))
    tail = list(instruct_samples(2, 1, start=3))
    assert [_dump(s) for s in tail] == [_dump(s) for s in full[3:]]
    assert [s["png"] for s in tail] == [s["png"] for s in full[3:]]


def test_splits_and_tasks_share_no_image() -> None:
    """Training and every eval split draw different images; so do the val and test splits."""
    train = {_digest(s) for name in ("caption", "instruct") for s in _samples(name)}
    val = {_digest(s) for name in ("vqa", "pope", "mc", "rec", "caption_eval") for s in _samples(name)}
    test = {_digest(s) for name in ("vqa", "rec") for s in _samples(name, 100, "test")}
    assert len(train) == 600
    assert not train & val and not train & test and not val & test


@pytest.mark.parametrize(
    "config", [ShapesConfig(), ShapesConfig(image_size=64, min_objects=6, max_objects=9)]
)
def test_object_pixels_lie_inside_their_boxes(config: ShapesConfig) -> None:
    """Each non-background pixel has an object's colour inside that object's box; boxes are tight and disjoint."""
    for sample in caption_samples(40, 0, "train", config):
        meta = sample["json"]["meta"]
        image = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB"))  # (H, W, 3)
        assert image.shape == (config.image_size, config.image_size, 3)
        background = np.asarray(meta["background"])
        foreground = (image != background).any(-1)
        explained = np.zeros_like(foreground)
        rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
        cells = []
        for obj in meta["objects"]:
            assert obj["rgb"] != meta["background"]
            x1, y1, x2, y2 = (round(v * config.image_size) for v in obj["bbox"])
            inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
            mine = (image == np.asarray(obj["rgb"])).all(-1) & inside
            ys, xs = np.nonzero(mine)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)  # tight box
            explained |= mine
            cell = 3 * min(int(3 * (y1 + y2) / 2 / config.image_size), 2) + min(
                int(3 * (x1 + x2) / 2 / config.image_size), 2
            )
            cells.append(cell)
            assert list(POSITION_PHRASES)[cell] == obj["position"]
        assert not (foreground & ~explained).any()
        assert len(set(cells)) == len(cells)  # one object per cell: no overlap


def test_pope_is_balanced_per_split_and_negatives_follow_their_rule() -> None:
    """Each pope_split has as many yes as no; negatives are absent, adversarial ones are one-attribute twins."""
    samples = list(eval_pope_samples(600, 0))
    counts = Counter((s["json"]["meta"]["pope_split"], s["json"]["label"]) for s in samples)
    assert counts == {(p, label): 100 for p in POPE_SPLITS for label in ("yes", "no")}
    ranking = popular_combos(ShapesConfig())
    for s in samples:
        meta = s["json"]["meta"]
        present = {(o["colour"], o["shape"]) for o in meta["objects"]}
        colour, shape = meta["object"].split()
        assert s["json"]["answers"] == [s["json"]["label"]]
        assert ((colour, shape) in present) == (s["json"]["label"] == "yes")
        if s["json"]["label"] == "no" and meta["pope_split"] == "adversarial":
            assert any(c == colour or sh == shape for c, sh in present)
        if s["json"]["label"] == "no" and meta["pope_split"] == "popular":
            assert (colour, shape) in [c for c in ranking if c not in present][:3]


def test_vocabulary_covers_every_generator() -> None:
    """Every word emitted by a few hundred samples of each generator is in shapes_vocabulary()."""
    vocabulary = set(shapes_vocabulary())
    assert {"<image>", "0.00", "0.12", "1.00", "option's", "A", "D", "[", "?"} <= vocabulary
    assert split_words("<image>\nIs it at [0.12, 1.00]? option's") == [
        "<image>",
        "Is",
        "it",
        "at",
        "[",
        "0.12",
        ",",
        "1.00",
        "]",
        "?",
        "option's",
    ]
    assert re.compile(SHAPES_WORD_PATTERN).pattern == SHAPES_WORD_PATTERN
    for name in SHAPES_GENERATORS:
        for sample in _samples(name):
            record = sample["json"]
            texts = [t["value"] for t in record["conversations"]] + record.get("answers", [])
            texts += list(record.get("choices", {}).values())
            missing = {w for t in texts for w in split_words(t)} - vocabulary
            assert not missing, (name, missing)


def test_samples_follow_the_schema() -> None:
    """Keys are safe and unique, turns alternate, '<image>' opens the first turn, eval fields are well-formed."""
    keys = set()
    for name in SHAPES_GENERATORS:
        for sample in _samples(name, 60):
            record = sample["json"]
            assert re.fullmatch(r"[A-Za-z0-9_-]+", sample["__key__"]) and record["id"] == sample["__key__"]
            keys.add(sample["__key__"])
            turns = record["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
            assert turns[0]["value"].startswith("<image>")
            assert sum(t["value"].count("<image>") for t in turns) == 1
            assert record["task"] == name and Image.open(io.BytesIO(sample["png"])).format == "PNG"
            if name in ("caption", "instruct"):
                continue
            assert isinstance(record["answers"], list) and record["split"] == "val" and record["question_id"]
            assert turns[1]["value"] == record["answers"][0]
            if name in ("vqa", "pope"):
                assert turns[0]["value"].endswith("\n" + SUFFIX)
            if name == "vqa":
                assert len(record["answers"]) == 10 and Counter(record["answers"]).most_common(1)[0][1] >= 8
            if name == "mc":
                assert (
                    set(record["choices"]) == {"A", "B", "C", "D"}
                    and len(set(record["choices"].values())) == 4
                )
                assert record["choices"][record["answers"][0]] == record["meta"]["answer_text"]
                assert turns[0]["value"].endswith("\nD. " + record["choices"]["D"] + "\n" + MC_SUFFIX)
            if name == "rec":
                x1, y1, x2, y2 = record["bbox"]
                assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    assert len(keys) == 7 * 60


def test_questions_refer_to_exactly_one_object() -> None:
    """REC expressions and object questions name attributes/positions that single out their target object."""
    checked = 0
    for sample in _samples("rec"):
        meta = sample["json"]["meta"]
        assert _select(meta["objects"], meta["expression"]) == [meta["target"]], meta["expression"]
        checked += 1
    for sample in _samples("vqa"):
        meta = sample["json"]["meta"]
        if meta["question_type"] in ("colour", "shape", "position", "spatial_colour", "spatial_shape"):
            question = sample["json"]["conversations"][0]["value"].split("\n")[1]
            assert _select(meta["objects"], question) == [meta["target"]], question
            checked += 1
    assert checked > 450


def test_spatial_questions_need_positions() -> None:
    """A guesser that knows every object's attributes but not positions does clearly worse on spatial questions."""
    spatial = [s for s in _samples("vqa") if s["json"]["meta"]["question_type"].startswith("spatial_")]
    assert len(spatial) >= 50
    hits = 0
    for sample in spatial:
        meta = sample["json"]["meta"]
        attribute = meta["question_type"].removeprefix("spatial_")
        guess = Counter(o[attribute] for o in meta["objects"]).most_common(1)[0][0]
        hits += guess == sample["json"]["answers"][0]
    assert hits / len(spatial) < 0.6


def test_instruct_conversations_mix_question_types() -> None:
    """Instruct samples hold 2-4 rounds and, over a few hundred samples, every question type appears."""
    types: Counter[str] = Counter()
    for sample in _samples("instruct"):
        rounds = len(sample["json"]["conversations"]) // 2
        assert 2 <= rounds <= 4 and len(sample["json"]["meta"]["question_types"]) == rounds
        types.update(t.removeprefix("spatial_") for t in sample["json"]["meta"]["question_types"])
    assert set(types) == {"colour", "shape", "size", "position", "count", "exists", "ground", "describe"}


def test_box_text_uses_the_configured_grid() -> None:
    """Box text has two decimals rounded half up on the coord_step grid."""
    assert box_text([0.125, 0.2, 0.374, 1.0]) == "[0.13, 0.20, 0.37, 1.00]"
    assert box_text([0.125, 0.2, 0.374, 1.0], 5) == "[0.15, 0.20, 0.35, 1.00]"
    for sample in eval_rec_samples(20, 0, "val", ShapesConfig(coord_step=0.05)):
        values = [float(v) for v in re.findall(r"\d\.\d\d", sample["json"]["answers"][0])]
        assert len(values) == 4 and all(round(v * 100) % 5 == 0 for v in values)


def test_config_rejects_invalid_values() -> None:
    """Bad config values and unsafe split names raise errors naming the field."""
    for kwargs, field in [
        ({"max_objects": 10}, "max_objects"),
        ({"large_frac": (0.3, 0.4)}, "large_frac"),
        ({"coord_step": 0.03}, "coord_step"),
        ({"small_frac": (0.2, 0.26)}, "small_frac"),
        ({"colour_jitter": 60}, "colour_jitter"),
    ]:
        with pytest.raises(ValueError, match=field):
            ShapesConfig(**kwargs)
    with pytest.raises(ValueError, match="split"):
        next(eval_vqa_samples(1, 0, "val/../x"))


def test_corpus_text_and_popularity() -> None:
    """make_corpus_text yields n texts in the vocabulary; popular colours and shapes are drawn more often."""
    texts = list(make_corpus_text(14, seed=2))
    assert len(texts) == 14 and texts == list(make_corpus_text(14, seed=2))
    assert not {w for t in texts for w in split_words(t)} - set(shapes_vocabulary())
    assert popular_combos(ShapesConfig())[0] == ("red", "circle")
    colours = Counter(o["colour"] for s in _samples("caption") for o in s["json"]["meta"]["objects"])
    assert colours["red"] > colours["orange"]


def test_shapes_boxes_are_written_without_spaces_and_public_data_keeps_llava_text() -> None:
    """ShapesWorld box answers use BOX_SEP (one token per value); the default keeps LLaVA's ', ' and both parse."""
    from deco_core.data.shapes_text import BOX_SEP
    from deco_core.eval.metrics_rec import parse_box

    compact = box_text([0.125, 0.2, 0.374, 1.0], 5, BOX_SEP)
    assert compact == "[0.15,0.20,0.35,1.00]"
    assert parse_box(compact) == parse_box(box_text([0.125, 0.2, 0.374, 1.0], 5)) == [0.15, 0.2, 0.35, 1.0]
    for sample in eval_rec_samples(5, 0, "val", ShapesConfig(coord_step=0.05)):
        assert " " not in sample["json"]["answers"][0]
