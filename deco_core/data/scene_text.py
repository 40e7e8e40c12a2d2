"""ShapesWorld scenes written as text, for the LLM's text-only foundation stage (``pipelines.foundation``).

A scene becomes one line per object in reading order, ``small yellow triangle bottom [0.50,0.85,0.65,1.00].``,
with its box on the data's coordinate grid — the same words and box tokens the answers use, and nothing outside the
ShapesWorld vocabulary. ``textualise`` puts that line where a sample's ``<image>`` stood and drops the image: the
LLM then learns the benchmark formats (presence, attributes, counts, choices, boxes) from the scene in words, and the
multimodal stages only have to teach the projector to say the same thing in visual tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from deco_core.data.corpus import format_samples, interleave
from deco_core.data.prompts import IMAGE_TOKEN
from deco_core.data.shapes import instruct_samples
from deco_core.data.shapes_config import ShapesConfig
from deco_core.data.shapes_text import BOX_SEP, box_text

OBJECT_KEYS = ("size", "colour", "shape", "position", "bbox")


def scene_text(objects: Sequence[Mapping[str, Any]], step_hundredths: int = 1) -> str:
    """Objects (``meta.objects`` entries) -> ``'<size> <colour> <shape> <position> [x1,y1,x2,y2]. …'``.

    Raises ValueError naming the object and the missing key when an entry lacks one of ``OBJECT_KEYS``.
    """
    parts = []
    for i, obj in enumerate(objects):
        missing = [k for k in OBJECT_KEYS if k not in obj]
        if missing:
            raise ValueError(f"scene object {i} lacks {', '.join(missing)}: expected keys {', '.join(OBJECT_KEYS)}")
        words = f"{obj['size']} {obj['colour']} {obj['shape']} {obj['position']}"
        parts.append(f"{words} {box_text(obj['bbox'], step_hundredths, BOX_SEP)}.")
    return " ".join(parts)


def textualise(sample: dict[str, Any], step_hundredths: int = 1) -> dict[str, Any]:
    """A schema sample with its image replaced by the scene as text (``meta.objects``): the ``<image>`` of the
    conversation becomes the scene line and the image bytes are dropped. Raises ValueError naming the sample when
    it has no ``meta.objects`` or no ``<image>`` in its conversation."""
    record = sample["json"]
    key = sample.get("__key__", record.get("id", "?"))
    objects = record.get("meta", {}).get("objects")
    if not objects:
        raise ValueError(f"sample {key}: no meta.objects to write the scene from")
    text = scene_text(objects, step_hundredths)
    turns = [dict(t) for t in record["conversations"]]
    hits = [i for i, t in enumerate(turns) if IMAGE_TOKEN in t["value"]]
    if len(hits) != 1:
        raise ValueError(f"sample {key}: expected one {IMAGE_TOKEN} in the conversation, found {len(hits)}")
    turns[hits[0]]["value"] = turns[hits[0]]["value"].replace(IMAGE_TOKEN, text)
    meta = {**record["meta"], "scene_text": True}
    return {"__key__": f"{key}_text", "json": {**record, "id": f"{record.get('id', key)}_text",
                                               "conversations": turns, "meta": meta}}


def text_corpus(n_formats: int, n_instruct: int, seed: int, split: str, shapes: ShapesConfig,
                mix: Mapping[str, float] | None = None) -> Iterator[dict[str, Any]]:
    """The foundation corpus: benchmark-format samples (split by ``mix``) and multi-turn instructions, every one
    textualised, interleaved sample by sample in a seeded order (each shard holds every format)."""
    step = shapes.coord_step_hundredths
    streams = {
        "formats": (textualise(s, step) for s in format_samples(n_formats, seed, split, shapes, mix)),
        "instruct": (textualise(s, step) for s in instruct_samples(n_instruct, seed, split, shapes)),
    }
    counts = {k: c for k, c in {"formats": n_formats, "instruct": n_instruct}.items() if c}
    yield from interleave({k: streams[k] for k in counts}, counts, seed)
