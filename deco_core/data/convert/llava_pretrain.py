"""LLaVA-558K pretraining captions (blip_laion_cc_sbu_558k.json + image folder) -> caption samples.

Input: a JSON list of {"id", "image" (path relative to `image_root`), "conversations": [human, gpt]}.
Output: task 'caption' in the `plain` layout (human '<image>', gpt the caption); the original human
prompt is kept in meta["prompt"].
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deco_core.data.convert.common import (
    IMAGE_TOKEN,
    ConversionStats,
    ImageLoader,
    PathLike,
    SkipRecord,
    load_json,
    normalise_conversation,
    require,
    resolve_image,
    run_records,
    safe_key,
)

SOURCE = "llava_pretrain"


def llava_records(annotation_file: PathLike) -> list[tuple[str, Any]]:
    """(record id, record) pairs of a LLaVA JSON list; raises naming the file if it is not a list."""
    records = load_json(annotation_file)
    if not isinstance(records, list):
        raise ValueError(f"{annotation_file}: expected a JSON list of records, got {type(records).__name__}")
    return [(str(r.get("id", i)) if isinstance(r, dict) else str(i), r) for i, r in enumerate(records)]


def convert_llava_pretrain(
    annotation_file: PathLike,
    image_root: PathLike,
    *,
    stats: ConversionStats | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield caption samples from LLaVA-558K; unconvertible records are counted in `stats`."""
    stats = stats if stats is not None else ConversionStats(SOURCE)
    loader, roots = ImageLoader(), [Path(image_root)]

    def convert(index: int, record: Any) -> list[dict[str, Any]]:
        record_id = str(require(record, "id", (str, int)))
        relative = require(record, "image", str)
        turns = normalise_conversation(record.get("conversations"), has_image=True)
        if len(turns) != 2:
            raise SkipRecord("bad_conversation", f"expected 1 human + 1 gpt turn, got {len(turns)} turns")
        text = turns[1]["value"].strip()
        if not text:
            raise SkipRecord("bad_record", "empty caption")
        ext, data = loader.load(resolve_image(roots, relative))
        prompt = turns[0]["value"].replace(IMAGE_TOKEN, "").strip()
        conversations = [{"from": "human", "value": IMAGE_TOKEN}, {"from": "gpt", "value": text}]
        meta = {"source": SOURCE, "image": relative, "prompt": prompt}
        json_record = {"id": record_id, "conversations": conversations, "task": "caption", "meta": meta}
        return [{"__key__": safe_key(SOURCE, f"{index:09d}"), ext: data, "json": json_record}]

    yield from run_records(llava_records(annotation_file), convert, stats, limit)
