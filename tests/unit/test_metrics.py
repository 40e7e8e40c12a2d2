"""Hand-checked cases for the answer-matching metrics in deco_core.eval.metrics (VQA, GQA, POPE, MME).

MMBench, REC and CIDEr are checked in test_metrics_mcq_box_caption.py.
"""

from __future__ import annotations

import pytest

from deco_core.eval.metrics import (
    exact_match,
    mme_parse,
    mme_scores,
    normalize_vqa_answer,
    pope_metrics,
    pope_parse,
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
