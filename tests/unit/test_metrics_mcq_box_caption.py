"""Hand-checked cases for the MMBench, REC and CIDEr metrics in deco_core.eval.metrics.

VQA, GQA, POPE and MME are checked in test_metrics.py.
"""

from __future__ import annotations

import math

import pytest

from deco_core.eval.metrics import (
    box_iou,
    cider,
    cider_per_item,
    extract_choice_letter,
    mmbench_circular,
    parse_box,
    rec_accuracy,
    tokenize_caption,
)

# --------------------------------------------------------------------------------------------------- MMBench

CHOICES = {"A": "dog", "B": "cat", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    ("prediction", "choices", "expected"),
    [
        ("B", CHOICES, "B"),
        ("(C)", CHOICES, "C"),
        ("D.", CHOICES, "D"),
        ("The answer is B.", CHOICES, "B"),
        ("A or B", CHOICES, None),  # two letters, no text match
        ("E", CHOICES, None),  # not an option letter
        ("A cat is sitting on the mat near the door", CHOICES, None),  # 'A' too early; too long for text
        (
            "I think the answer is C because of the shape of the wings and the beak in the picture",
            CHOICES,
            "C",
        ),  # step 1 fails (C too early), step 2 finds "answer is C"
        ("a red apple", {"A": "red apple", "B": "green pear"}, "A"),  # step 3: option text
        ("black cat", {"A": "cat", "B": "black cat"}, None),  # two option texts match
        ("", CHOICES, None),
    ],
)
def test_extract_choice_letter_edge_cases(
    prediction: str, choices: dict[str, str], expected: str | None
) -> None:
    """The pinned can_infer steps 1-3 return the letter, or None when the answer is ambiguous or absent."""
    assert extract_choice_letter(prediction, choices) == expected


def test_extract_choice_letter_rejects_bad_keys() -> None:
    """Choice keys must be single uppercase letters."""
    with pytest.raises(ValueError, match="uppercase"):
        extract_choice_letter("a", {"a": "dog"})


def _mcq_row(index: int, answer: str, prediction: str, category: str) -> dict:
    return {
        "index": index,
        "answer": answer,
        "prediction": prediction,
        "choices": CHOICES,
        "category": category,
    }


def test_mmbench_circular_group_with_one_wrong_rotation_fails() -> None:
    """A question counts only if every rotation is right; accuracy is over groups, also per category."""
    records = [
        _mcq_row(1, "A", "A", "x"),
        _mcq_row(1_000_001, "B", "B", "x"),
        _mcq_row(2_000_001, "C", "The answer is C", "x"),
        _mcq_row(3_000_001, "D", "fish", "x"),
        _mcq_row(2, "A", "A", "x"),
        _mcq_row(1_000_002, "B", "B", "x"),
        _mcq_row(2_000_002, "C", "D", "x"),  # one wrong rotation sinks group 2
        _mcq_row(3, "B", "B", "y"),
    ]
    got = mmbench_circular(records)
    assert got["n_groups"] == 3
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["per_category"] == {"x": pytest.approx(0.5), "y": pytest.approx(1.0)}


def test_mmbench_circular_unparsable_row_fails_group() -> None:
    """A rotation whose letter cannot be inferred is wrong, so its group is a miss."""
    got = mmbench_circular([_mcq_row(5, "A", "A", "x"), _mcq_row(1_000_005, "B", "no idea", "x")])
    assert got["accuracy"] == 0.0


# ------------------------------------------------------------------------------------------------------- REC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[0.1, 0.2, 0.5, 0.6]", [0.1, 0.2, 0.5, 0.6]),
        ("box [10,20,30,40] and [0, 0, 1, 1]", [10.0, 20.0, 30.0, 40.0]),  # first group wins
        ("[1, 2, 3] then [4, 5, 6, 7]", [4.0, 5.0, 6.0, 7.0]),  # a 3-number group is not a box
        ("[-1.5, .5, 2e1, 3.]", [-1.5, 0.5, 20.0, 3.0]),
        ("[1, 2, 3]", None),
        ("[1, 2, 3, 4, 5]", None),
        ("(1, 2, 3, 4)", None),  # not bracketed
        ("[a, b, c, d]", None),
        ("no box here", None),
    ],
)
def test_parse_box_first_bracketed_four_numbers(text: str, expected: list[float] | None) -> None:
    """Only a bracketed group of exactly 4 numbers parses; anything else is a failed parse (None)."""
    assert parse_box(text) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),
        ([0, 0, 4, 4], [1, 1, 3, 3], 0.25),
        ([0, 0, 1, 1], [1, 0, 2, 1], 0.0),  # touching edges: no +1 convention
        ([0, 0, 1, 1], [5, 5, 6, 6], 0.0),
        ([1, 1, 1, 3], [0, 0, 4, 4], 0.0),  # zero-width box
        ([3, 3, 1, 1], [0, 0, 4, 4], 0.0),  # inverted box
    ],
)
def test_box_iou_known_boxes(a: list[float], b: list[float], expected: float) -> None:
    """IoU = inter / (a1 + a2 - inter) on continuous coordinates; degenerate boxes give 0."""
    assert box_iou(a, b) == pytest.approx(expected)


def test_box_iou_rejects_wrong_length() -> None:
    """A box must have 4 coordinates."""
    with pytest.raises(ValueError, match="expected"):
        box_iou([0, 0, 1], [0, 0, 1, 1])


def test_rec_accuracy_failed_parse_counts_as_wrong() -> None:
    """A failed parse stays in the denominator; IoU exactly at the threshold is correct (>=)."""
    texts = ["[0, 0, 2, 2]", "I cannot find it", "[0, 0, 10, 10]", "[0, 0, 2, 1]"]
    gts = [[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 4, 4], [0, 0, 1, 1]]  # IoUs: 1, -, 0.16, 0.5
    assert rec_accuracy(texts, gts) == pytest.approx(2 / 4)
    assert rec_accuracy(texts, gts, threshold=0.6) == pytest.approx(1 / 4)


# ----------------------------------------------------------------------------------------------------- CIDEr


def test_tokenize_caption_lowercases_and_strips_punctuation() -> None:
    """The plain tokenizer lower-cases and turns punctuation into separators."""
    assert tokenize_caption("A man, riding a horse!") == ["a", "man", "riding", "a", "horse"]


def test_cider_identical_caption_beats_mismatched() -> None:
    """Predictions equal to a reference score higher than unrelated ones on the same set."""
    refs = [
        ["a man riding a horse", "a person rides a horse on a beach"],
        ["two dogs playing in the snow", "dogs play in snow"],
        ["a bowl of soup on a table", "soup in a white bowl"],
    ]
    good = ["a man riding a horse", "two dogs playing in the snow", "a bowl of soup on a table"]
    bad = ["a red car parked on the street", "a plate of food", "people at an airport"]
    assert cider(good, refs) > cider(bad, refs) >= 0.0
    assert cider(good, refs) > 1.0


def test_cider_hand_computed_values() -> None:
    """One-word captions: an exact match with df=1 scores 10*1/4; a df=N n-gram has IDF 0."""
    assert cider(["cat", "dog"], [["cat"], ["dog"]]) == pytest.approx(2.5)
    # 'dog' occurs in both items' references -> weight 0; item 1 averages 1 and 0 over its two refs.
    assert cider_per_item(["cat", "dog"], [["cat", "dog"], ["dog"]]) == pytest.approx([1.25, 0.0])


def test_cider_clipping_and_length_penalty() -> None:
    """A repeated word is clipped to the reference count and the length gap (3 bigrams) is penalised."""
    scores = cider_per_item(["cat cat cat cat", "dog"], [["cat"], ["dog"]])
    assert scores == pytest.approx([10 * 0.25 * math.exp(-9 / 72) / 4, 2.5])


def test_cider_single_item_scores_zero_and_bad_input_raises() -> None:
    """With one item every IDF is log(1/1) = 0; mismatched or empty references raise."""
    assert cider(["a cat"], [["a cat"]]) == 0.0
    with pytest.raises(ValueError, match="no reference"):
        cider(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        cider(["a", "b"], [["a"]])
