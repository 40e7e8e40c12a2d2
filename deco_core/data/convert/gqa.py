"""GQA questions (a JSON dict question_id -> {"imageId", "question", "answer", "isBalanced"}) -> eval samples.

Images are `<imageId>.jpg` under `image_root`. Task 'gqa' (exact-match scoring), answers = [answer],
prompt with the LLaVA-1.5 short-answer suffix. With balanced_only (default) unbalanced questions are
skipped under reason 'not_balanced', so the counts still add up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deco_core.data.convert.common import (
    ConversionStats,
    ImageLoader,
    PathLike,
    SkipRecord,
    eval_turns,
    load_json,
    require,
    run_records,
    safe_key,
)
from deco_core.data.convert.vqav2 import with_suffix

SOURCE = "gqa"


def convert_gqa(
    questions_file: PathLike,
    image_root: PathLike,
    *,
    split: str = "testdev",
    balanced_only: bool = True,
    stats: ConversionStats | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield GQA eval samples; skips (missing image, unbalanced, broken fields) are counted in `stats`."""
    stats = stats if stats is not None else ConversionStats(SOURCE)
    doc = load_json(questions_file)
    if not isinstance(doc, dict):
        raise ValueError(f"{questions_file}: expected a JSON object question_id -> question record")
    loader = ImageLoader()

    def convert(index: int, item: Any) -> list[dict[str, Any]]:
        qid, record = item
        if balanced_only and isinstance(record, dict) and record.get("isBalanced") is not True:
            raise SkipRecord("not_balanced", f"isBalanced={record.get('isBalanced')!r}")
        image_id = require(record, "imageId", str)
        text = require(record, "question", str)
        if "answer" not in record:
            raise SkipRecord("missing_answer", f"question {qid}")
        answer = require(record, "answer", str)
        ext, data = loader.load(Path(image_root) / f"{image_id}.jpg")
        json_record = {
            "id": str(qid),
            "conversations": eval_turns(with_suffix(text), answer),
            "task": "gqa",
            "meta": {"source": SOURCE, "image_id": image_id},
            "answers": [answer],
            "split": split,
            "question_id": str(qid),
        }
        return [{"__key__": safe_key(SOURCE, f"{index:09d}"), ext: data, "json": json_record}]

    yield from run_records(((str(qid), (qid, rec)) for qid, rec in doc.items()), convert, stats, limit)
