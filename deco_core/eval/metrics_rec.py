"""Referring-expression comprehension (RefCOCO/+/g): box parsing, IoU and Acc@IoU.

Boxes are [x1, y1, x2, y2] in continuous coordinates; both sides must already be in the same frame (convert
normalised outputs to the pixel frame the model was trained in before scoring). See
/work/shared/reference/metrics.md ("RefCOCO / RefCOCO+ / RefCOCOg").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

logger = logging.getLogger(__name__)

_NUMBER = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
# The first [n, n, n, n] group in the text; brackets holding any other content are skipped.
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")


def parse_box(text: str) -> list[float] | None:
    """The first bracketed group of exactly 4 comma-separated numbers, as [x1, y1, x2, y2]; None if absent.

    >>> parse_box("It is at [0.12, 0.30, 0.56, 0.9].")
    [0.12, 0.3, 0.56, 0.9]
    """
    match = _BOX.search(text)
    if match is None:
        return None
    return [float(v) for v in match.groups()]


def _area(box: Sequence[float]) -> float:
    """Area of an xyxy box; 0 for a degenerate box (x2 <= x1 or y2 <= y1, or NaN coordinates)."""
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        return 0.0
    return (x2 - x1) * (y2 - y1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes: inter / (area_a + area_b - inter), no +1 pixel convention.

    A degenerate box (zero or negative width/height) has IoU 0 with anything.
    """
    for name, box in (("a", a), ("b", b)):
        if len(box) != 4:
            raise ValueError(
                f"box_iou: box {name} has {len(box)} values {list(box)}; expected [x1, y1, x2, y2]"
            )
    area_a, area_b = _area(a), _area(b)
    if area_a == 0.0 or area_b == 0.0:
        return 0.0
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / (area_a + area_b - inter)


def rec_accuracy(texts: list[str], gt_boxes: list[list[float]], threshold: float = 0.5) -> float:
    """Share of outputs whose first parsed box has IoU >= threshold with its GT box (Acc@0.5 by default).

    An output with no parsable box counts as wrong and stays in the denominator. Shikra's variant uses
    `>` instead of `>=`; this function pins `>=` (Qwen-VL, lmms-eval).
    """
    if len(texts) != len(gt_boxes):
        raise ValueError(f"rec_accuracy: {len(texts)} outputs but {len(gt_boxes)} GT boxes; expected equal")
    if not texts:
        raise ValueError("rec_accuracy: no items to score")
    correct = 0
    failed_parses = 0
    for text, gt in zip(texts, gt_boxes, strict=True):
        box = parse_box(text)
        if box is None:
            failed_parses += 1
            continue
        correct += box_iou(box, gt) >= threshold
    if failed_parses:
        logger.info(
            "rec_accuracy: %d of %d outputs had no parsable box (scored wrong)", failed_parses, len(texts)
        )
    return correct / len(texts)
