"""MME yes/no benchmark -> eval samples (task 'mme').

Layout (ours, the simpler of MME's two): `root/<subtask>/<subtask>.txt` with lines
`image<TAB>question<TAB>answer` (the eval tool's format), images at `root/<subtask>/<image>` or
`root/<subtask>/images/<image>`. As LLaVA-1.5 does, "Please answer yes or no." is swapped for the short-answer
suffix; the original question stays in meta. question_id = subtask/image/line, meta.image pairs an image's
two questions for acc+.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from deco_core.data.convert.common import (
    ConversionStats,
    ImageLoader,
    PathLike,
    SkipRecord,
    eval_turns,
    resolve_image,
    run_records,
    safe_key,
)
from deco_core.data.convert.vqav2 import with_suffix
from deco_core.data.prompts import MME_ORIGINAL_SUFFIX

SOURCE = "mme"
MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_subtasks(root: Path) -> list[str]:
    """Sub-folders of `root` holding a `<name>/<name>.txt` question file, sorted."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / f"{d.name}.txt").is_file())


def _category(subtask: str) -> str:
    return "perception" if subtask in MME_PERCEPTION else "cognition" if subtask in MME_COGNITION else "other"


def _lines(root: Path, subtasks: Sequence[str]) -> Iterator[tuple[str, tuple[str, int, str]]]:
    for subtask in subtasks:
        lines = (root / subtask / f"{subtask}.txt").read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, start=1):
            if line.strip():
                yield f"{subtask}:{n}", (subtask, n, line)


def convert_mme(
    root: PathLike,
    *,
    split: str = "test",
    subtasks: Sequence[str] | None = None,
    stats: ConversionStats | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield MME eval samples for `subtasks` (default: all found under `root`); skips counted in `stats`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MME root not found: {root}")
    found = mme_subtasks(root)
    if not found:
        raise ValueError(f"{root}: no <subtask>/<subtask>.txt question files found")
    unknown = sorted(set(subtasks or ()) - set(found))
    if unknown:
        raise ValueError(f"unknown MME subtasks {unknown}; found under {root}: {', '.join(found)}")
    stats = stats if stats is not None else ConversionStats(SOURCE)
    loader = ImageLoader()

    def convert(index: int, item: tuple[str, int, str]) -> list[dict[str, Any]]:
        subtask, line_no, line = item
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise SkipRecord("bad_record", f"expected image<TAB>question<TAB>answer, got {len(parts)} fields")
        image, question, answer = (p.strip() for p in parts)
        if answer.lower() not in ("yes", "no"):
            raise SkipRecord("bad_label", f"answer {answer!r}: expected Yes or No")
        path = resolve_image([root / subtask, root / subtask / "images"], image)
        ext, data = loader.load(path)
        prompt = with_suffix(question.replace(MME_ORIGINAL_SUFFIX, "").strip())
        question_id = f"{subtask}/{image}/{line_no}"
        meta = {
            "source": SOURCE,
            "subtask": subtask,
            "category": _category(subtask),
            "image": image,
            "original_question": question,
        }
        json_record = {
            "id": question_id,
            "conversations": eval_turns(prompt, answer),
            "task": "mme",
            "meta": meta,
            "answers": [answer],
            "label": answer.lower(),
            "split": split,
            "question_id": question_id,
        }
        return [{"__key__": safe_key(SOURCE, subtask, f"{line_no:05d}"), ext: data, "json": json_record}]

    yield from run_records(_lines(root, list(subtasks or found)), convert, stats, limit)
