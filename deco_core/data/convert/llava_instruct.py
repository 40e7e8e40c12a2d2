"""LLaVA-665K instruction mix (llava_v1_5_mix665k.json, images under several roots) -> instruct samples.

Input: a JSON list of {"id", "image"?, "conversations"}; the image path is looked up under each root in
`image_roots` in order (e.g. the coco/gqa/ocr_vqa/textvqa/vg parent folder). Records without "image" are
text-only samples (no image key). '<image>' is moved to the start of the first human turn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from deco_core.data.convert.common import (
    ConversionStats,
    ImageLoader,
    PathLike,
    normalise_conversation,
    require,
    resolve_image,
    run_records,
    safe_key,
)
from deco_core.data.convert.llava_pretrain import llava_records

SOURCE = "llava_instruct"


def convert_llava_instruct(
    annotation_file: PathLike,
    image_roots: Sequence[PathLike] | PathLike,
    *,
    stats: ConversionStats | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield instruct samples (task 'instruct') from a LLaVA instruction JSON; skips are counted in `stats`."""
    stats = stats if stats is not None else ConversionStats(SOURCE)
    roots = [Path(image_roots)] if isinstance(image_roots, (str, Path)) else [Path(r) for r in image_roots]
    loader = ImageLoader()

    def convert(index: int, record: Any) -> list[dict[str, Any]]:
        record_id = str(require(record, "id", (str, int)))
        has_image = "image" in record
        turns = normalise_conversation(record.get("conversations"), has_image=has_image)
        sample: dict[str, Any] = {"__key__": safe_key(SOURCE, f"{index:09d}")}
        relative = None
        if has_image:
            relative = require(record, "image", str)
            ext, data = loader.load(resolve_image(roots, relative))
            sample[ext] = data
        meta = {"source": SOURCE, "image": relative}
        sample["json"] = {"id": record_id, "conversations": turns, "task": "instruct", "meta": meta}
        return [sample]

    yield from run_records(llava_records(annotation_file), convert, stats, limit)
