"""Hand-checked cases for the benchmark metrics in deco_core.eval.metrics (VQA, GQA, POPE, MME, MMBench, REC, CIDEr)."""

from __future__ import annotations

import math

import pytest

from deco_core.eval.metrics import (
    box_iou,
    cider,
    cider_per_item,
    exact_match,
    extract_choice_letter,
    mmbench_circular,
    mme_parse,
    mme_scores,
    normalize_vqa_answer,
    parse_box,
    pope_metrics,
    pope_parse,
    rec_accuracy,
    tokenize_caption,
    vqa_accuracy,
)

# ----------------------------------------------------------------------------------------------- VQAv2 / GQA


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two dogs.", "2 dogs"),  # number word + trailing period
        ("The cat", "cat"),  # article
        ("an apple a day", "apple day"),  # articles anywhere
        ("dont", "don't"),  # contraction map adds the apostrophe
        ("whats up?", "what's up"),  # '?' without adjacent space becomes a space
        ("yes, it is", "yes it is"),  # ', ' occurs -> every ',' is deleted
        ("black/white", "black white"),  # '/' without adjacent space becomes a space
        ("1,000", "1000"),  # digit,digit -> delete
        ("1,000-2,000", "10002000"),  # digit,digit switches *every* mark to delete
        ("well-known fact (x)", "well known fact x"),  # ' (' occurs -> '(' deleted; ')' spaced
        ("3.", "3"),  # period rule drops a dot not followed by a digit
        ("3.5", "3.5"),  # ... but keeps a decimal point
        ("man's 10:30 50%", "man's 10:30 50%"),  # apostrophe, ':' and '%' survive
        ("  Zero\tNone\n", "0 0"),  # whitespace cleaned, none/zero -> 0
        ("Im here", "im here"),  # capitalised map keys never fire after lower-casing
    ],
)
def test_normalize_vqa_answer_follows_official_rules(raw: str, expected: str) -> None:
    """Each official processing rule (numbers, articles, contractions, punctuation, periods) maps as documented."""
    assert normalize_vqa_answer(raw) == expected


def test_period_rule_removes_at_most_32_dots() -> None:
    """The reference passes re.UNICODE (32) as the sub count, so only the first 32 dots go."""
    assert normalize_vqa_answer("." * 40) == "." * 8


@pytest.mark.parametrize(("m", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0)])
def test_vqa_accuracy_leave_one_out_values(m: int, expected: float) -> None:
    """With m of 10 answers matching, leave-one-out averaging gives exactly 0/0.3/0.6/0.9/1.0."""
    answers = ["cat"] * m + [f"other{i}" for i in range(10 - m)]
    # Exact leave-one-out value: m rows see m-1 matches, 10-m rows see m matches.
    exact = (m * min(1, (m - 1) / 3) + (10 - m) * min(1, m / 3)) / 10 if m else 0.0
    assert vqa_accuracy("cat", answers) == pytest.approx(exact)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_vqa_accuracy_number_word_normalised_when_answers_disagree() -> None:
    """'Two' matches '2' once the disagreeing GT answers trigger normalisation."""
    assert vqa_accuracy("Two", ["2"] * 5 + ["3"] * 5) == pytest.approx(1.0)
    assert vqa_accuracy("two", ["2"] + ["3"] * 9) == pytest.approx(0.3)


def test_vqa_accuracy_raw_comparison_when_answers_identical() -> None:
    """When all 10 answers are identical the comparison is raw: 'Two' vs ten '2' scores 0, '2 ' scores 1."""
    assert vqa_accuracy("Two", ["2"] * 10) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" 2\n", ["2"] * 10) == pytest.approx(1.0)


def test_vqa_accuracy_contraction_and_punctuation_match() -> None:
    """The prediction "What's up?" matches "whats up" after punctuation and the contraction map (official scores 1)."""
    assert vqa_accuracy("What's up?", ["whats up"] * 5 + ["what is up"] * 5) == pytest.approx(1.0)
    assert vqa_accuracy("the dog", ["dog", "dog", "dog", "a dog", "puppy"]) == pytest.approx(1.0)


def test_vqa_accuracy_rejects_empty_answers() -> None:
    """An item without GT answers is a data error, not a zero score."""
    with pytest.raises(ValueError, match="answers"):
        vqa_accuracy("cat", [])


def test_exact_match_is_strict_string_equality() -> None:
    """GQA exact match applies no normalisation: case, whitespace and periods all matter."""
    assert exact_match("yes", "yes") == 1.0
    assert exact_match("Yes", "yes") == 0.0
    assert exact_match("yes.", "yes") == 0.0
    assert exact_match(" yes", "yes") == 0.0


# ------------------------------------------------------------------------------------------------------ POPE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No, there is not.", "no"),
        ("NO", "yes"),  # case-sensitive, default yes
        ("Yes. There is no dog.", "yes"),  # text after the first '.' is ignored
        ("There is not a dog in the image", "no"),
        ("no", "no"),
        ("yes", "yes"),
        ("Nope", "yes"),  # only the exact tokens No/not/no count
    ],
)
def test_pope_parse_official_rule(text: str, expected: str) -> None:
    """POPE parsing keeps the first sentence and says no only on the tokens No/not/no."""
    assert pope_parse(text) == expected


def test_pope_metrics_hand_table() -> None:
    """On TP=2, FN=1, FP=2, TN=0 the metrics are acc 0.4, P 0.5, R 2/3, F1 4/7, yes-ratio 0.8."""
    labels = ["yes", "yes", "yes", "no", "no"]
    preds = ["Yes, there is.", "yes", "No.", "Yes", "I see a dog"]
    got = pope_metrics(preds, labels)
    assert set(got) == {"accuracy", "precision", "recall", "f1", "yes_ratio"}
    assert got["accuracy"] == pytest.approx(0.4)
    assert got["precision"] == pytest.approx(0.5)
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["f1"] == pytest.approx(4 / 7)
    assert got["yes_ratio"] == pytest.approx(0.8)


def test_pope_metrics_zero_division_guard() -> None:
    """All-'no' predictions leave precision/recall/F1 undefined in the reference; here they are 0."""
    got = pope_metrics(["No", "no"], ["yes", "no"])
    assert got == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}


def test_pope_metrics_rejects_bad_labels_and_lengths() -> None:
    """Labels outside yes/no and length mismatches raise instead of silently mis-scoring."""
    with pytest.raises(ValueError, match="labels"):
        pope_metrics(["yes"], ["Yes"])
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        pope_metrics(["yes", "no"], ["yes"])


# ------------------------------------------------------------------------------------------------------- MME


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("Yes.", "yes"),
        ("Nope", "no"),
        ("none", "no"),
        ("Not sure", "no"),
        ("maybe", "other"),
        ("It is yes", "other"),  # 'yes' not within the first 4 characters
    ],
)
def test_mme_parse_official_rule(text: str, expected: str) -> None:
    """MME parsing: exact yes/no, else yes/no within the first 4 lower-cased characters, else other."""
    assert mme_parse(text) == expected


def _mme_row(subtask: str, image: str, answer: str, prediction: str) -> dict[str, str]:
    return {"subtask": subtask, "image": image, "question": "q?", "answer": answer, "prediction": prediction}


def test_mme_scores_hand_table() -> None:
    """acc counts questions, acc+ counts images with both right; score = 100*acc + 100*acc+; families sum."""
    records = [
        _mme_row("existence", "a.jpg", "Yes", "Yes"),
        _mme_row("existence", "a.jpg", "No", "No, it is not"),
        _mme_row("existence", "b.jpg", "Yes", "yes"),
        _mme_row("existence", "b.jpg", "No", "I think yes"),  # other -> wrong
        _mme_row("code_reasoning", "c.png", "Yes", "no"),
        _mme_row("code_reasoning", "c.png", "No", "no"),
    ]
    got = mme_scores(records)
    existence = got["subtasks"]["existence"]
    assert existence["acc"] == pytest.approx(0.75)
    assert existence["acc_plus"] == pytest.approx(0.5)
    assert existence["score"] == pytest.approx(125.0)
    assert got["subtasks"]["code_reasoning"]["score"] == pytest.approx(50.0)
    assert got["perception"] == pytest.approx(125.0)
    assert got["cognition"] == pytest.approx(50.0)


def test_mme_scores_rejects_unknown_subtask_and_missing_keys() -> None:
    """An unknown subtask names the valid ones; a record without a prediction names the missing key."""
    with pytest.raises(ValueError, match="valid: .*existence"):
        mme_scores([_mme_row("Existence", "a", "yes", "yes")])
    bad = _mme_row("count", "a", "yes", "yes")
    del bad["prediction"]
    with pytest.raises(ValueError, match="prediction"):
        mme_scores([bad])


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
