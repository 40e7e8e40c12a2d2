"""Specification tests for the offline ShapesWorld tokenizer (deco_core/model/tokenizer.py): lossless round
trips, coverage of every generator, save/load, one training per process, words next to special tokens."""

from __future__ import annotations

import pytest


def _vicuna_text() -> str:
    from deco_core.data.conversation import prompt_text

    question = "<image>\nWhat colour is the circle?\nAnswer the question using a single word or phrase."
    return prompt_text(question) + " red</s>USER: Is there a blue square? ASSISTANT: no</s>"


@pytest.mark.parametrize("text", [
    "a small red square on the right.",
    "[0.12, 0.40, 0.35, 0.62]",
    pytest.param(_vicuna_text(), id="vicuna_v1"),
])
def test_tokenizer_roundtrip(shapes_tokenizer, text):
    """decode(encode(text)) restores the text exactly, with no <unk>."""
    ids = shapes_tokenizer.encode(text, add_special_tokens=False)
    assert shapes_tokenizer.unk_token_id not in ids
    assert shapes_tokenizer.decode(ids) == text


def test_tokenizer_covers_every_generator(shapes_tokenizer):
    """Samples from every ShapesWorld generator, templated as in training, tokenize with no <unk>."""
    from deco_core.data.conversation import preprocess_conversation
    from deco_core.data.shapes import SHAPES_GENERATORS, sample_text
    from deco_core.model.tokenizer import image_token_id

    image_id = image_token_id(shapes_tokenizer)
    checked = 0
    for name, (generator, split) in SHAPES_GENERATORS.items():
        template = "plain" if name == "caption" else "vicuna_v1"
        for sample in generator(50, 0, split):
            example = preprocess_conversation(sample["json"]["conversations"], shapes_tokenizer, template,
                                              image_id, 16, 10_000, True)
            ids = example.input_ids + shapes_tokenizer.encode(sample_text(sample), add_special_tokens=False)
            unknown = [shapes_tokenizer.decode([i]) for i in ids if i == shapes_tokenizer.unk_token_id]
            assert not unknown, f"{name} sample {sample['json']['id']} has <unk>: {sample_text(sample)!r}"
            checked += 1
    assert checked == 50 * len(SHAPES_GENERATORS) >= 300


def test_tokenizer_save_load_preserves_ids(shapes_tokenizer, tmp_path):
    """save_pretrained + AutoTokenizer.from_pretrained keep every id, the special tokens and decoding."""
    from transformers import AutoTokenizer

    from deco_core.model.tokenizer import image_token_id

    shapes_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = _vicuna_text()
    assert loaded.encode(text, add_special_tokens=False) == shapes_tokenizer.encode(text, add_special_tokens=False)
    assert loaded.get_vocab() == shapes_tokenizer.get_vocab()
    assert image_token_id(loaded) == image_token_id(shapes_tokenizer)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        assert getattr(loaded, attr) == getattr(shapes_tokenizer, attr), attr




def test_shapes_tokenizer_is_trained_once_and_each_call_gets_its_own_copy(monkeypatch):
    """A repeat build reuses the trained model (same ids) but hands out an independent object."""
    import deco_core.model.tokenizer as tokenizer_module
    from deco_core.model.tokenizer import build_shapes_tokenizer

    first = build_shapes_tokenizer(seed=7, n_samples=120)
    monkeypatch.setattr(tokenizer_module, "train_word_tokenizer", lambda *a, **k: pytest.fail("trained twice"))
    second = build_shapes_tokenizer(seed=7, n_samples=120)
    text = _vicuna_text()
    assert second.encode(text, add_special_tokens=False) == first.encode(text, add_special_tokens=False)
    assert second.special_tokens_map == first.special_tokens_map
    first.add_tokens(["zzzq"])
    assert "zzzq" not in second.get_vocab() and len(second) == len(first) - 1


def test_train_word_tokenizer_learns_words_next_to_special_tokens():
    """Words glued to a special token in training text ('</s>USER') are learned as they are encoded later."""
    from deco_core.model.tokenizer import SPECIAL_TOKENS, train_word_tokenizer

    tok = train_word_tokenizer(["ASSISTANT: yes</s>USER: why? ASSISTANT: no</s>"], words=["red"])
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    for text in ("USER: why? ASSISTANT: yes</s>USER: red", "(red red"):
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.unk_token_id not in ids, tok.convert_ids_to_tokens(ids)
        assert tok.decode(ids) == text


@pytest.mark.parametrize("step", [0.05, 0.1, 0.01])
def test_every_grid_coordinate_is_one_and_the_same_token_in_every_box_position(shapes_tokenizer, step):
    """A ShapesWorld box answer spends exactly one token per coordinate, the same id whether the value is x1, y1,
    x2 or y2, and no stray space token before the bracket."""
    from deco_core.data.conversation import vicuna_v1_segments
    from deco_core.data.shapes_text import BOX_SEP, box_text

    hundredths = round(step * 100)
    grid = [k / 100 for k in range(0, 101, hundredths)]
    ids_of: dict[float, set[int]] = {v: set() for v in grid}
    for i, v in enumerate(grid):
        box = [v, grid[(i + 3) % len(grid)], grid[(i + 5) % len(grid)], grid[(i + 7) % len(grid)]]
        answer = vicuna_v1_segments([{"from": "human", "value": "q"},
                                     {"from": "gpt", "value": box_text(box, hundredths, BOX_SEP)}])[-1].text
        tokens = shapes_tokenizer.convert_ids_to_tokens(shapes_tokenizer.encode(answer, add_special_tokens=False))
        assert tokens[0] == "\u2581[" and "\u2581" not in tokens and len(tokens) == 4 + 5 + 1  # 4 values, [,,,] </s>
        for position, value in enumerate(box):
            ids_of[value].add(shapes_tokenizer.convert_tokens_to_ids(tokens[1 + 2 * position]))
    assert all(len(ids) == 1 for ids in ids_of.values())
    assert len({next(iter(ids)) for ids in ids_of.values()}) == len(grid)  # distinct values, distinct tokens


def test_tokenizer_view_encodes_like_the_transformers_tokenizer_and_pickles_small(shapes_tokenizer):
    """The preprocessing actors' tokenizer view gives the same ids (special tokens included) as the transformers
    tokenizer it came from, and survives pickling without carrying a transformers object."""
    import pickle

    from deco_core.data.conversation import prompt_text
    from deco_core.model.tokenizer_view import TokenizerView, tokenizer_view

    view = pickle.loads(pickle.dumps(tokenizer_view(shapes_tokenizer)))
    assert isinstance(view, TokenizerView)
    for text in (_vicuna_text(), prompt_text("<image>\nWhere is the red circle?", "vicuna_v1_nosys"),
                 " [0.15,0.40,0.35,0.60]</s>", "<image>a small red square on the right.\n"):
        assert view(text)["input_ids"] == shapes_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert (view.bos_token_id, view.pad_token_id) == (shapes_tokenizer.bos_token_id, shapes_tokenizer.pad_token_id)
    assert view.convert_tokens_to_ids("<image>") == shapes_tokenizer.convert_tokens_to_ids("<image>")
