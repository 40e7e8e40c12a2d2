"""The scene written as text (the foundation LLM's corpus) and its scoring: format, vocabulary, errors."""

from __future__ import annotations

import pytest

from deco_core.data.prompts import IMAGE_TOKEN
from deco_core.data.scene_text import scene_text, text_corpus, textualise
from deco_core.data.shapes import instruct_samples
from deco_core.data.shapes_config import ShapesConfig
from deco_core.eval.scene_text_eval import score_scene_text, text_questions

SHAPES = ShapesConfig(coord_step=0.05)


def test_scene_text_writes_every_object_in_order_on_the_box_grid():
    objects = [{"size": "small", "colour": "red", "shape": "circle", "position": "top left",
                "bbox": [0.104, 0.0, 0.26, 0.2]},
               {"size": "large", "colour": "blue", "shape": "square", "position": "bottom",
                "bbox": [0.4, 0.7, 0.66, 0.97]}]
    assert scene_text(objects, 5) == ("small red circle top left [0.10,0.00,0.25,0.20]. "
                                      "large blue square bottom [0.40,0.70,0.65,0.95].")


def test_scene_text_names_the_object_and_the_missing_key():
    with pytest.raises(ValueError, match="scene object 1 lacks bbox"):
        scene_text([{"size": "small", "colour": "red", "shape": "circle", "position": "top", "bbox": [0, 0, 1, 1]},
                    {"size": "small", "colour": "red", "shape": "circle", "position": "top"}])


def test_textualise_puts_the_scene_where_the_image_was_and_drops_the_image():
    sample = next(instruct_samples(1, seed=0, split="train", config=SHAPES))
    text = textualise(sample, SHAPES.coord_step_hundredths)
    assert "png" not in text and text["__key__"] == f"{sample['__key__']}_text"
    first = text["json"]["conversations"][0]["value"]
    assert IMAGE_TOKEN not in first
    assert first.startswith(scene_text(sample["json"]["meta"]["objects"], 5))
    assert first.endswith(sample["json"]["conversations"][0]["value"].replace(f"{IMAGE_TOKEN}", ""))
    assert text["json"]["conversations"][1:] == sample["json"]["conversations"][1:]  # answers untouched
    assert IMAGE_TOKEN in sample["json"]["conversations"][0]["value"]  # the input is not modified


def test_textualise_refuses_a_sample_without_objects_or_image_token():
    sample = next(instruct_samples(1, seed=0, split="train", config=SHAPES))
    no_objects = {**sample, "json": {**sample["json"], "meta": {}}}
    with pytest.raises(ValueError, match=f"sample {sample['__key__']}: no meta.objects"):
        textualise(no_objects)
    turns = [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "red"}]
    no_image = {**sample, "json": {**sample["json"], "conversations": turns}}
    with pytest.raises(ValueError, match="expected one <image> in the conversation, found 0"):
        textualise(no_image)


def test_text_corpus_mixes_formats_and_instructions_within_the_vocabulary(shapes_tokenizer):
    samples = list(text_corpus(60, 20, seed=0, split="train", shapes=SHAPES))
    assert len(samples) == 80
    tasks = [s["json"]["task"] for s in samples]
    assert tasks.count("instruct") == 20 and {"vqa", "pope", "mc", "rec"} <= set(tasks)
    assert tasks[:40].count("instruct") not in (0, 20)  # interleaved, not one stream after the other
    for s in samples:
        words = " ".join(t["value"] for t in s["json"]["conversations"])
        ids = shapes_tokenizer(words, add_special_tokens=False)["input_ids"]
        assert shapes_tokenizer.unk_token_id not in ids, words


def test_text_questions_are_the_eval_questions_with_the_scene_as_text():
    pope = text_questions("shapes-pope", 6, seed=0, shapes=SHAPES)
    assert [r["label"] for _, r in pope] == ["yes", "no"] * 3
    assert all(IMAGE_TOKEN not in q and "Is there a" in q and "[" in q for q, _ in pope)
    with pytest.raises(ValueError, match="vqav2: not a ShapesWorld task"):
        text_questions("vqav2", 1, seed=0, shapes=SHAPES)


def test_score_scene_text_scores_each_task_on_n_questions(tiny_cfg):
    from deco_core.model.deco import DecoModel

    model = DecoModel.from_config(tiny_cfg.model)
    scores = score_scene_text(model, 6, seed=0, shapes=tiny_cfg.data.shapes, tasks=("shapes-pope", "shapes-rec"))
    assert set(scores) == {"shapes-pope", "shapes-rec"}
    assert scores["shapes-pope"]["n"] == 6 and 0.0 <= scores["shapes-pope"]["accuracy"] <= 1.0
    assert "acc_at_0.5_attribute" in scores["shapes-rec"] or "acc_at_0.5_position" in scores["shapes-rec"]
