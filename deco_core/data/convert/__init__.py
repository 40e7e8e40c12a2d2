"""Converters from public dataset formats to the sample schema, and their registry.

Each `convert_<name>(...)` yields schema samples and counts every record it cannot convert in a
`ConversionStats` (per skip reason, summary logged at the end), never raising for a bad record.
`CONVERTERS` maps a name to (function, one-line description); `get_converter` looks one up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from deco_core.data.convert.common import SKIP_REASONS, ConversionStats, SkipRecord
from deco_core.data.convert.gqa import convert_gqa
from deco_core.data.convert.llava_instruct import convert_llava_instruct
from deco_core.data.convert.llava_pretrain import convert_llava_pretrain
from deco_core.data.convert.mmbench import convert_mmbench
from deco_core.data.convert.mme import convert_mme
from deco_core.data.convert.pope import convert_pope
from deco_core.data.convert.refcoco import convert_refcoco
from deco_core.data.convert.vqav2 import convert_vqav2

Converter = Callable[..., Iterator[dict[str, Any]]]

# fmt: off
CONVERTERS: dict[str, tuple[Converter, str]] = {
    "llava_pretrain": (convert_llava_pretrain, "LLaVA-558K caption JSON + image folder -> 'caption' samples"),
    "llava_instruct": (convert_llava_instruct, "LLaVA-665K instruction JSON + image roots -> 'instruct' samples"),
    "refcoco":        (convert_refcoco,        "REC JSON (image, width, height, COCO bbox, sentences) -> 'rec'"),
    "vqav2":          (convert_vqav2,          "VQAv2 questions + annotations JSON + COCO images -> 'vqa'"),
    "gqa":            (convert_gqa,            "GQA questions JSON (qid -> record) + images -> 'gqa'"),
    "pope":           (convert_pope,           "POPE jsonl (question_id, image, text, label) -> 'pope'"),
    "mme":            (convert_mme,            "MME <subtask>/<subtask>.txt (image, question, answer) -> 'mme'"),
    "mmbench":        (convert_mmbench,        "MMBench TSV with base64 images -> 'mc' (A-D choices)"),
}
# fmt: on


def get_converter(name: str) -> Converter:
    """The converter registered as `name`; KeyError listing the valid names otherwise."""
    if name not in CONVERTERS:
        raise KeyError(f"unknown converter {name!r}; valid: {', '.join(CONVERTERS)}")
    return CONVERTERS[name][0]


__all__ = [
    "CONVERTERS",
    "SKIP_REASONS",
    "ConversionStats",
    "SkipRecord",
    "get_converter",
    "convert_gqa",
    "convert_llava_instruct",
    "convert_llava_pretrain",
    "convert_mmbench",
    "convert_mme",
    "convert_pope",
    "convert_refcoco",
    "convert_vqav2",
]
