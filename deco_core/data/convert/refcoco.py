"""RefCOCO-family referring expressions (a simplified REC annotation JSON) -> REC eval samples.

Input layout (ours, documented): a JSON list of {"image": file under `image_root`, "width", "height",
"bbox": [x, y, w, h] COCO pixels, "sentences": [str | {"sent": str}], "ref_id"?}. One sample per sentence:
task 'rec', bbox = normalised xyxy (x1 = x / width ...), answers = [the LLaVA-1.5 box text, two decimals].
The annotated width/height must match the image file (lmms-eval normalises by the original size).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from deco_core.data.convert.common import (
    ConversionStats,
    ImageLoader,
    PathLike,
    SkipRecord,
    eval_turns,
    load_json,
    require,
    resolve_image,
    run_records,
    safe_key,
)
from deco_core.data.prompts import rec_prompt
from deco_core.data.shapes_text import box_text


def _sentences(record: dict[str, Any]) -> list[str]:
    raw = record.get("sentences")
    if not isinstance(raw, list) or not raw:
        raise SkipRecord("bad_record", "sentences: expected a non-empty list")
    out = []
    for s in raw:
        text = s.get("sent") if isinstance(s, dict) else s
        if not isinstance(text, str) or not text.strip():
            raise SkipRecord("bad_record", f"sentence {s!r}: expected a non-empty string or {{'sent': str}}")
        out.append(text.strip())
    return out


def normalised_xyxy(bbox: Any, width: float, height: float) -> list[float]:
    """COCO [x, y, w, h] pixels -> [x1, y1, x2, y2] in [0, 1]; SkipRecord('bad_bbox') if invalid."""
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        raise SkipRecord("bad_record", f"bbox {bbox!r}: expected 4 numbers [x, y, w, h]")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0 or x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
        raise SkipRecord("bad_bbox", f"bbox {bbox} in a {width}x{height} image")
    box = [x / width, y / height, (x + w) / width, (y + h) / height]
    return [min(max(v, 0.0), 1.0) for v in box]


def convert_refcoco(
    annotation_file: PathLike,
    image_root: PathLike,
    *,
    split: str = "val",
    source: str = "refcoco",
    stats: ConversionStats | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one REC eval sample per referring sentence; `source` names the variant (refcoco+, refcocog)."""
    stats = stats if stats is not None else ConversionStats(source)
    records = load_json(annotation_file)
    if not isinstance(records, list):
        raise ValueError(f"{annotation_file}: expected a JSON list of referring records")
    loader, roots = ImageLoader(), [Path(image_root)]

    def convert(index: int, record: Any) -> list[dict[str, Any]]:
        relative = require(record, "image", str)
        width, height = require(record, "width", (int, float)), require(record, "height", (int, float))
        if width <= 0 or height <= 0:
            raise SkipRecord("bad_record", f"width/height {width}x{height}: expected positive numbers")
        box = normalised_xyxy(record.get("bbox"), float(width), float(height))
        sentences = _sentences(record)
        ext, data = loader.load(resolve_image(roots, relative))
        actual = Image.open(io.BytesIO(data)).size
        if actual != (int(width), int(height)):
            raise SkipRecord(
                "size_mismatch", f"{relative}: annotated {width}x{height}, file {actual[0]}x{actual[1]}"
            )
        ref_id = str(record.get("ref_id", index))
        answer = box_text(box)
        samples = []
        for k, sentence in enumerate(sentences):
            question_id = f"{ref_id}_{k}"
            json_record = {
                "id": question_id, "conversations": eval_turns(rec_prompt(sentence), answer),
                "task": "rec", "meta": {"source": source, "image": relative, "expression": sentence},
                "answers": [answer], "bbox": box, "split": split, "question_id": question_id,
            }  # fmt: skip
            samples.append(
                {"__key__": safe_key(source, f"{index:08d}", f"{k:02d}"), ext: data, "json": json_record}
            )
        return samples

    yield from run_records(
        (
            (str(record.get("ref_id", i)) if isinstance(record, dict) else str(i), record)
            for i, record in enumerate(records)
        ),
        convert,
        stats,
        limit,
    )
