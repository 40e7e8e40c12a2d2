"""VQAv2 (questions JSON + annotations JSON + COCO image folder) -> open VQA eval samples.

Questions: {"questions": [{"image_id", "question", "question_id"}]}; annotations: {"annotations":
[{"question_id", "answers": [{"answer", "answer_id"}], "multiple_choice_answer", "answer_type",
"question_type"}]}; images named by `image_pattern` (default COCO_val2014_%012d.jpg). Task 'vqa', answers =
the 10 annotator answers, gpt turn = multiple_choice_answer, prompt with the LLaVA-1.5 short-answer suffix.
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
from deco_core.data.prompts import SHORT_ANSWER_SUFFIX

SOURCE = "vqav2"


def with_suffix(question: str, suffix: str = SHORT_ANSWER_SUFFIX) -> str:
    """`question` + newline + `suffix`, unless it already ends with the suffix."""
    question = question.strip()
    return question if question.endswith(suffix) else f"{question}\n{suffix}"


def _list_field(path: PathLike, key: str) -> list[Any]:
    doc = load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise ValueError(f"{path}: expected a JSON object with a list under {key!r}")
    return doc[key]


def _answers(annotation: dict[str, Any]) -> list[str]:
    raw = annotation.get("answers")
    if not isinstance(raw, list) or not all(
        isinstance(a, dict) and isinstance(a.get("answer"), str) for a in raw
    ):
        raise SkipRecord("bad_record", "answers: expected a list of {'answer': str, 'answer_id': int}")
    if not raw:
        raise SkipRecord("missing_answer", "empty answers list")
    return [a["answer"] for a in raw]


def convert_vqav2(
    questions_file: PathLike,
    annotations_file: PathLike,
    image_root: PathLike,
    *,
    split: str = "val",
    image_pattern: str = "COCO_val2014_{image_id:012d}.jpg",
    stats: ConversionStats | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield VQA eval samples joined by question_id; unmatched or broken records are counted in `stats`."""
    stats = stats if stats is not None else ConversionStats(SOURCE)
    questions = _list_field(questions_file, "questions")
    by_qid = {
        a["question_id"]: a
        for a in _list_field(annotations_file, "annotations")
        if isinstance(a, dict) and "question_id" in a
    }
    loader = ImageLoader()

    def convert(index: int, question: Any) -> list[dict[str, Any]]:
        qid = require(question, "question_id", (int, str))
        image_id = require(question, "image_id", int)
        text = require(question, "question", str)
        annotation = by_qid.get(qid)
        if annotation is None:
            raise SkipRecord("missing_annotation", f"question_id {qid}")
        answers = _answers(annotation)
        best = annotation.get("multiple_choice_answer")
        best = best if isinstance(best, str) and best else max(set(answers), key=answers.count)
        ext, data = loader.load(Path(image_root) / image_pattern.format(image_id=image_id))
        meta = {
            "source": SOURCE,
            "image_id": image_id,
            "answer_type": annotation.get("answer_type"),
            "question_type": annotation.get("question_type"),
        }
        json_record = {
            "id": str(qid),
            "conversations": eval_turns(with_suffix(text), best),
            "task": "vqa",
            "meta": meta,
            "answers": answers,
            "split": split,
            "question_id": str(qid),
        }
        return [{"__key__": safe_key(SOURCE, f"{index:09d}"), ext: data, "json": json_record}]

    records = (
        (str(q.get("question_id", i)) if isinstance(q, dict) else str(i), q) for i, q in enumerate(questions)
    )
    yield from run_records(records, convert, stats, limit)
