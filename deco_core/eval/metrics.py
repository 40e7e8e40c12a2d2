"""Benchmark metrics as small pure functions, each pinned to one official scoring script.

Implementations live in `metrics_*.py` by benchmark family and are re-exported here; the exact rules and
their sources are in /work/shared/reference/metrics.md. No function here touches files, models or services.
"""

from __future__ import annotations

from deco_core.eval.metrics_caption import cider, cider_per_item, tokenize_caption
from deco_core.eval.metrics_mcq import extract_choice_letter, mmbench_circular
from deco_core.eval.metrics_rec import box_iou, parse_box, rec_accuracy
from deco_core.eval.metrics_vqa import exact_match, normalize_vqa_answer, vqa_accuracy
from deco_core.eval.metrics_yesno import (
    MME_COGNITION,
    MME_PERCEPTION,
    mme_parse,
    mme_scores,
    pope_metrics,
    pope_parse,
)

__all__ = [
    "MME_COGNITION",
    "MME_PERCEPTION",
    "box_iou",
    "cider",
    "cider_per_item",
    "exact_match",
    "extract_choice_letter",
    "mme_parse",
    "mme_scores",
    "mmbench_circular",
    "normalize_vqa_answer",
    "parse_box",
    "pope_metrics",
    "pope_parse",
    "rec_accuracy",
    "tokenize_caption",
    "vqa_accuracy",
]
