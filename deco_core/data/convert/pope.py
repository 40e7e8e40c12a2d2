"""POPE object-hallucination questions (jsonl lines {"question_id", "image", "text", "label"}) -> eval samples.

One file per POPE split (coco_pope_random/popular/adversarial); the split is read from the file name
unless `pope_split` is given. Task 'pope', label and answers = ["yes"|"no"], meta.pope_split; prompt with
the LLaVA-1.5 short-answer suffix. A line that is not valid JSON is skipped as 'bad_record'.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deco_core.data.convert.common import (
    ConversionStats,
    ImageLoader,
    PathLike,
    SkipRecord,
    eval_turns,
    require,
    resolve_image,
    run_records,
    safe_key,
)
from deco_core.data.convert.vqav2 import with_suffix

SOURCE = "pope"
POPE_SPLITS = ("random", "popular", "adversarial")


def infer_pope_split(path: Path) -> str:
    """The POPE split named in a file name such as coco_pope_adversarial.json."""
    found = [s for s in POPE_SPLITS if s in path.name]
    if len(found) != 1:
        raise ValueError(
            f"{path}: cannot tell the POPE split from the file name; pass pope_split= one of "
            f"{', '.join(POPE_SPLITS)}"
        )
    return found[0]


def convert_pope(
    questions_file: PathLike,
    image_root: PathLike,
    *,
    pope_split: str | None = None,
    split: str = "test",
    stats: ConversionStats | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield POPE eval samples from one jsonl file; broken lines and missing images are counted in `stats`."""
    path = Path(questions_file)
    if not path.is_file():
        raise FileNotFoundError(f"POPE question file not found: {path}")
    pope_split = pope_split or infer_pope_split(path)
    if pope_split not in POPE_SPLITS:
        raise ValueError(f"pope_split={pope_split!r}; valid: {', '.join(POPE_SPLITS)}")
    stats = stats if stats is not None else ConversionStats(f"{SOURCE}_{pope_split}")
    loader, roots = ImageLoader(), [Path(image_root)]

    def convert(index: int, line: str) -> list[dict[str, Any]]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SkipRecord("bad_record", f"not valid JSON ({err})") from err
        qid = require(record, "question_id", (int, str))
        relative = require(record, "image", str)
        text = require(record, "text", str)
        label = str(require(record, "label", str)).strip().lower()
        if label not in ("yes", "no"):
            raise SkipRecord("bad_label", f"label {record['label']!r}: expected yes or no")
        ext, data = loader.load(resolve_image(roots, relative))
        json_record = {
            "id": str(qid),
            "conversations": eval_turns(with_suffix(text), label),
            "task": "pope",
            "meta": {"source": SOURCE, "image": relative, "pope_split": pope_split},
            "answers": [label],
            "label": label,
            "split": split,
            "question_id": str(qid),
        }
        return [{"__key__": safe_key(SOURCE, pope_split, f"{index:07d}"), ext: data, "json": json_record}]

    lines = path.read_text(encoding="utf-8").splitlines()
    records = ((f"line {n + 1}", line) for n, line in enumerate(lines) if line.strip())
    yield from run_records(records, convert, stats, limit)
