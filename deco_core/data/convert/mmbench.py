"""MMBench TSV (index, question, hint, A, B, C, D, answer, category, l2-category, image base64) -> MC samples.

Options stop at the first empty/NaN cell. Prompt (LLaVA-1.5): `[hint\\n]question\\nA. ...\\nB. ...\\n` +
"Answer with the option's letter from the given choices directly."; task 'mc', choices letter -> text,
answers = [letter]. Rows of circular copies (index >= 1e6) share meta.circular_group = index % 1e6; an image
cell holding only a row index refers to that row's image.
"""

from __future__ import annotations

import base64
import binascii
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deco_core.data.convert.common import (
    ConversionStats,
    PathLike,
    SkipRecord,
    eval_turns,
    image_entry,
    run_records,
    safe_key,
)
from deco_core.data.prompts import MC_SUFFIX

SOURCE = "mmbench"
REQUIRED_COLUMNS = ("index", "question", "A", "B", "answer", "image")
OPTION_LETTERS = "ABCDEFGH"


def _missing(value: str | None) -> bool:
    return value is None or value.strip() == "" or value.strip().lower() == "nan"


def _rows(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # base64 images exceed the 128 KiB default
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing TSV columns {missing}; found {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            yield f"index {row.get('index')} (line {n})", row


def _options(row: dict[str, str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for letter in OPTION_LETTERS:
        if _missing(row.get(letter)):
            break
        options[letter] = row[letter].strip()
    if len(options) < 2:
        raise SkipRecord("bad_record", f"expected at least options A and B, got {sorted(options)}")
    return options


def convert_mmbench(
    tsv_file: PathLike, *, split: str = "dev", stats: ConversionStats | None = None, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """Yield MMBench multiple-choice eval samples; broken rows are counted in `stats`."""
    path = Path(tsv_file)
    if not path.is_file():
        raise FileNotFoundError(f"MMBench TSV not found: {path}")
    stats = stats if stats is not None else ConversionStats(SOURCE)
    images: dict[str, str] = {}  # row index -> base64, for cells that refer to another row's image

    def convert(_: int, row: dict[str, str]) -> list[dict[str, Any]]:
        index = (row.get("index") or "").strip()
        if not index.isdigit() or _missing(row.get("question")):
            raise SkipRecord("bad_record", f"index {index!r} / question: expected an integer and a question")
        options = _options(row)
        answer = (row.get("answer") or "").strip()
        if _missing(answer):
            raise SkipRecord("missing_answer", "empty answer cell")
        if answer not in options:
            raise SkipRecord("bad_answer", f"answer {answer!r} not among options {sorted(options)}")
        raw = (row.get("image") or "").strip()
        if raw.isdigit() and len(raw) <= 64:
            if raw not in images:
                raise SkipRecord("missing_image", f"image refers to row {raw}, not seen before")
            raw = images[raw]
        else:
            images[index] = raw
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as err:
            raise SkipRecord("bad_image", f"image cell is not base64 ({err})") from err
        ext, data = image_entry(data, f"row {index}")
        hint = "" if _missing(row.get("hint")) else row["hint"].strip() + "\n"
        prompt = "\n".join(
            [hint + row["question"].strip(), *(f"{k}. {v}" for k, v in options.items()), MC_SUFFIX]
        )
        meta = {
            "source": SOURCE,
            "index": int(index),
            "circular_group": int(index) % 1_000_000,
            "category": row.get("category"),
            "l2-category": row.get("l2-category"),
        }
        json_record = {
            "id": index,
            "conversations": eval_turns(prompt, answer),
            "task": "mc",
            "meta": meta,
            "answers": [answer],
            "choices": options,
            "split": split,
            "question_id": index,
        }
        return [{"__key__": safe_key(SOURCE, index), ext: data, "json": json_record}]

    yield from run_records(_rows(path), convert, stats, limit)
