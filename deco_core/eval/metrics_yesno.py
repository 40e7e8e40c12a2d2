"""Yes/no hallucination and perception benchmarks: POPE (parse + P/R/F1) and MME (acc, acc+, score).

POPE is pinned to AoiDragon/POPE `evaluate.py` (= LLaVA `eval_pope.py`); MME to `calculation.py` of the MME
eval tool. See /work/shared/reference/metrics.md ("POPE", "MME").
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Any

logger = logging.getLogger(__name__)

_YES_NO = ("yes", "no")
# Tokens that turn a POPE answer into "no"; the match is case-sensitive ("NO" is not among them).
_POPE_NEGATIONS = frozenset({"No", "not", "no"})

# MME subtasks and the family each one is summed into.
MME_PERCEPTION: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters",
    "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
MME_COGNITION: tuple[str, ...] = (
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)  # fmt: skip
_MME_RECORD_KEYS = ("subtask", "image", "question", "answer", "prediction")


def _safe_div(num: float, den: float) -> float:
    """num / den, or 0.0 when den is 0 (the reference has no guard)."""
    return num / den if den else 0.0


def pope_parse(text: str) -> str:
    """Map a free-form POPE answer to "yes"/"no" by the official rule.

    Keep the text before the first '.', delete ',', split on single spaces; "no" if any token is exactly
    `No`, `not` or `no`, else "yes". Case-sensitive with default yes: "NO" -> "yes", "No, there is not." -> "no".
    """
    first_sentence = text.split(".", 1)[0]
    tokens = first_sentence.replace(",", "").split(" ")
    return "no" if any(tok in _POPE_NEGATIONS for tok in tokens) else "yes"


def pope_metrics(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """POPE accuracy, precision, recall, F1 and yes-ratio of raw predictions against "yes"/"no" labels.

    Every prediction goes through `pope_parse` (idempotent on "yes"/"no"); "yes" is the positive class.
    yes_ratio is the share of *predicted* yes. Undefined ratios (no predicted or no true positives) are 0.
    Callers must pair predictions and labels by question id, not by file position.
    """
    if len(predictions) != len(labels):
        raise ValueError(
            f"pope_metrics: {len(predictions)} predictions but {len(labels)} labels; expected equal"
        )
    if not labels:
        raise ValueError("pope_metrics: no items to score; expected >= 1 prediction/label pair")
    bad = sorted({lab for lab in labels if lab not in _YES_NO})
    if bad:
        raise ValueError(f"pope_metrics: labels must be 'yes' or 'no', got {bad[:5]}")
    pairs = Counter(zip((pope_parse(p) for p in predictions), labels, strict=True))  # (pred, label) -> n
    tp, fp = pairs["yes", "yes"], pairs["yes", "no"]
    tn, fn = pairs["no", "no"], pairs["no", "yes"]
    n = len(labels)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": _safe_div(2 * precision * recall, precision + recall),
        "yes_ratio": (tp + fp) / n,
    }


def mme_parse(text: str) -> str:
    """Map an MME answer to "yes", "no" or "other" (counted wrong) by the official rule.

    Lower-case; exactly "yes"/"no" wins; else "yes" within the first 4 characters -> yes; elif "no" within the
    first 4 -> no (so "nope", "not sure", "none" read as no); else "other". No stripping is applied.
    """
    lowered = text.lower()
    if lowered in _YES_NO:
        return lowered
    head = lowered[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _check_mme_record(i: int, rec: dict[str, Any]) -> None:
    """Raise a clear error for a record with missing keys, an unknown subtask or a non yes/no answer."""
    missing = [k for k in _MME_RECORD_KEYS if k not in rec]
    if missing:
        raise ValueError(
            f"mme_scores: record {i} lacks keys {missing}; expected keys {list(_MME_RECORD_KEYS)}"
        )
    if rec["subtask"] not in MME_PERCEPTION + MME_COGNITION:
        raise ValueError(
            f"mme_scores: record {i} has unknown subtask {rec['subtask']!r}; "
            f"valid: {list(MME_PERCEPTION + MME_COGNITION)}"
        )
    if str(rec["answer"]).lower() not in _YES_NO:
        raise ValueError(f"mme_scores: record {i} has answer {rec['answer']!r}; expected 'yes' or 'no'")


def _mme_subtask_scores(rows: list[dict[str, Any]]) -> dict[str, float]:
    """acc over questions, acc+ over images (all questions of the image right), score = 100*acc + 100*acc+."""
    by_image: dict[str, list[bool]] = defaultdict(list)
    n_other = 0
    for rec in rows:
        parsed = mme_parse(str(rec["prediction"]))
        n_other += parsed == "other"
        by_image[str(rec["image"])].append(parsed == str(rec["answer"]).lower())
    odd = sum(len(v) != 2 for v in by_image.values())
    if odd:
        logger.warning("MME subtask %s: %d images do not have exactly 2 questions", rows[0]["subtask"], odd)
    acc = sum(sum(v) for v in by_image.values()) / len(rows)
    acc_plus = sum(all(v) for v in by_image.values()) / len(by_image)
    return {
        "acc": acc,
        "acc_plus": acc_plus,
        "score": 100.0 * acc + 100.0 * acc_plus,
        "n_questions": float(len(rows)),
        "n_other": float(n_other),
    }


def mme_scores(records: list[dict[str, Any]]) -> dict[str, Any]:
    """MME per-subtask acc / acc_plus / score plus the perception and cognition sums of subtask scores.

    Each record has keys subtask, image, question, answer (GT "yes"/"no") and prediction (raw text). Images
    are grouped by (subtask, image). Returns {"subtasks": {name: {...}}, "perception": float, "cognition":
    float}; a family sum covers only the subtasks present (absent ones are logged).
    """
    if not records:
        raise ValueError("mme_scores: no records to score")
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i, rec in enumerate(records):
        _check_mme_record(i, rec)
        grouped[rec["subtask"]].append(rec)
    subtasks = {name: _mme_subtask_scores(rows) for name, rows in grouped.items()}
    absent = [name for name in MME_PERCEPTION + MME_COGNITION if name not in subtasks]
    if absent:
        logger.info("MME: subtasks absent from the records (count as 0 in the sums): %s", absent)
    return {
        "subtasks": subtasks,
        "perception": sum(subtasks[n]["score"] for n in MME_PERCEPTION if n in subtasks),
        "cognition": sum(subtasks[n]["score"] for n in MME_COGNITION if n in subtasks),
    }
