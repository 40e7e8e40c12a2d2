"""Multiple-choice scoring: option-letter extraction and MMBench CircularEval accuracy.

The extractor is pinned to steps 1-3 of VLMEvalKit's `can_infer` (`vlmeval/utils/matching_util.py`) with
exact matching (no LLM judge); see /work/shared/reference/metrics.md ("MMBench (CircularEval)").
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any

logger = logging.getLogger(__name__)

# Step 1 turns these characters into spaces before tokenising.
_OPTION_SEPARATORS = ".()[],:;!*#{}"
# Step 1 accepts the letter only if its first occurrence has index > len(tokens) - 5 (VLMEvalKit's test,
# i.e. it is one of the last 4 tokens; any position when there are <= 4 tokens).
_TAIL_WINDOW = 5
# Step 2: "answer is X" / "answer is (X)" / "answer is: X", X an uppercase letter standing alone.
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*\(?([A-Z])(?![A-Za-z0-9])", re.IGNORECASE)
# Step 3 gives up when the answer is longer than this multiple of all option texts together.
_MAX_TEXT_RATIO = 2
_ROTATION_STRIDE = 1_000_000
_MCQ_RECORD_KEYS = ("index", "answer", "prediction", "choices")


def _letter_from_tokens(prediction: str, choices: dict[str, str]) -> str | None:
    """Step 1: exactly one option letter appears as a standalone token, and near the end."""
    text = prediction
    for ch in _OPTION_SEPARATORS:
        text = text.replace(ch, " ")
    tokens = text.split()
    present = [letter for letter in choices if letter in tokens]
    if len(present) != 1:
        return None
    letter = present[0]
    return letter if tokens.index(letter) > len(tokens) - _TAIL_WINDOW else None


def _letter_from_answer_is(prediction: str, choices: dict[str, str]) -> str | None:
    """Step 2: the first "answer is X" phrase whose X is an option letter."""
    for match in _ANSWER_IS.finditer(prediction):
        if match.group(1) in choices:
            return match.group(1)
    return None


def _letter_from_option_text(prediction: str, choices: dict[str, str]) -> str | None:
    """Step 3: exactly one (lower-cased, non-empty) option text is a substring of the lower-cased answer."""
    answer = prediction.lower()
    texts = {letter: str(text).lower() for letter, text in choices.items()}
    if len(answer) > _MAX_TEXT_RATIO * sum(len(t) for t in texts.values()):
        return None
    hits = [letter for letter, text in texts.items() if text and text in answer]
    return hits[0] if len(hits) == 1 else None


def extract_choice_letter(prediction: str, choices: dict[str, str]) -> str | None:
    """The option letter a free-form answer picks, or None when it cannot be inferred (scored wrong).

    Pinned extractor (VLMEvalKit `can_infer`, exact-matching mode): (1) after turning `.()[],:;!*#{}` into
    spaces, exactly one option letter is a standalone (case-sensitive) token and its first occurrence is among
    the final tokens (index > n_tokens - 5); else (2) an "answer is X" phrase names an option letter; else
    (3) exactly one option text occurs in the lower-cased answer, provided the answer is at most twice as long
    as all option texts together. VLMEvalKit's refusal phrases / 'Z' shortcut are not reproduced: they also
    score wrong. lmms-eval's looser `A.`/`(A)` rules are deliberately not used.
    """
    bad = [k for k in choices if not (len(k) == 1 and "A" <= k <= "Z")]
    if bad:
        raise ValueError(f"extract_choice_letter: choice keys must be single uppercase letters, got {bad}")
    for step in (_letter_from_tokens, _letter_from_answer_is, _letter_from_option_text):
        letter = step(prediction, choices)
        if letter is not None:
            return letter
    return None


def _check_mcq_record(i: int, rec: dict[str, Any]) -> None:
    """Raise a clear error for a CircularEval record that lacks a required key."""
    missing = [k for k in _MCQ_RECORD_KEYS if k not in rec]
    if missing:
        raise ValueError(
            f"mmbench_circular: record {i} lacks keys {missing}; expected {list(_MCQ_RECORD_KEYS)}"
        )


def _group_accuracy(hits: dict[int, bool], labels: dict[int, Any]) -> dict[str, float]:
    """Per-label accuracy over circular groups; groups whose label is None are left out."""
    per_label: dict[str, list[bool]] = defaultdict(list)
    for group, hit in hits.items():
        if labels.get(group) is not None:
            per_label[str(labels[group])].append(hit)
    return {label: sum(v) / len(v) for label, v in sorted(per_label.items())}


def mmbench_circular(records: list[dict[str, Any]]) -> dict[str, Any]:
    """MMBench CircularEval: a question counts only if every rotated copy gets its own GT letter.

    Rows sharing `index % 1_000_000` form one group (index >= 1_000_000 marks a rotation). Each row's
    prediction goes through `extract_choice_letter` against that row's `choices` and is compared with that
    row's `answer`. Returns {"accuracy", "n_groups", "per_category", "per_l2_category"}; categories come from
    the optional `category` / `l2-category` keys of the group's first row in input order.
    """
    if not records:
        raise ValueError("mmbench_circular: no records to score")
    hits: dict[int, bool] = {}
    categories: dict[int, Any] = {}
    l2_categories: dict[int, Any] = {}
    for i, rec in enumerate(records):
        _check_mcq_record(i, rec)
        group = int(rec["index"]) % _ROTATION_STRIDE
        letter = extract_choice_letter(str(rec["prediction"]), rec["choices"])
        hits[group] = hits.get(group, True) and letter == rec["answer"]
        categories.setdefault(group, rec.get("category"))
        l2_categories.setdefault(group, rec.get("l2-category"))
    logger.info("MMBench CircularEval: %d rows in %d groups", len(records), len(hits))
    return {
        "accuracy": sum(hits.values()) / len(hits),
        "n_groups": len(hits),
        "per_category": _group_accuracy(hits, categories),
        "per_l2_category": _group_accuracy(hits, l2_categories),
    }
