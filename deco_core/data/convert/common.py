"""Shared pieces of the public-format converters: skip accounting, image loading and conversation checks.

A record that cannot be converted is never raised and never silently dropped: helpers raise `SkipRecord`,
`run_records` catches it and `ConversionStats.skip` counts it under a reason from `SKIP_REASONS`.
Image policy: JPEG files are kept byte-for-byte under "jpg" (after a full decode check); any other format
is decoded and re-encoded as RGB PNG under "png". A whole file that is missing or unparsable raises.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from deco_core.data.prompts import IMAGE_TOKEN

logger = logging.getLogger(__name__)

PathLike = str | Path

# fmt: off
SKIP_REASONS: dict[str, str] = {
    "bad_record":         "a required field is missing, has the wrong type, or the line is not valid JSON",
    "missing_image":      "the image file does not exist under the given root(s)",
    "bad_image":          "the image bytes cannot be decoded",
    "unknown_role":       "a conversation turn has a role other than 'human' or 'gpt'",
    "bad_conversation":   "turns do not alternate human/gpt, or '<image>' is misplaced or repeated",
    "missing_annotation": "a question has no matching annotation",
    "missing_answer":     "no ground-truth answer",
    "bad_answer":         "the answer is not one of the options",
    "bad_label":          "a yes/no label is neither yes nor no",
    "bad_bbox":           "the box is degenerate or outside the image",
    "size_mismatch":      "the annotated image size differs from the image file",
    "not_balanced":       "filtered out: not in the balanced subset",
}
# fmt: on


class SkipRecord(Exception):
    """Raised inside a record conversion to skip it under `reason` (a SKIP_REASONS key)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; valid: {', '.join(SKIP_REASONS)}")
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class ConversionStats:
    """Counts of converted and skipped records (per reason) for one conversion run."""

    source: str
    converted: int = 0
    """Samples yielded (a record may yield several, e.g. one per RefCOCO sentence)."""
    records_ok: int = 0
    """Records converted; records_ok + total_skipped = records seen."""
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, record_id: str, detail: str = "") -> None:
        """Count one skipped record; the first of each reason is logged at WARNING, the rest at DEBUG."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; valid: {', '.join(SKIP_REASONS)}")
        self.skipped[reason] += 1
        message = f"record {record_id}: {detail}" if detail else f"record {record_id}"
        if reason not in self.examples:
            self.examples[reason] = message
            logger.warning("%s: skipping %s (%s); further ones logged at DEBUG", self.source, message, reason)
        else:
            logger.debug("%s: skipping %s (%s)", self.source, message, reason)

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={c}" for r, c in sorted(self.skipped.items())) or "none"
        return (
            f"{self.source}: converted {self.converted} samples from {self.records_ok} records, "
            f"skipped {self.total_skipped} records ({reasons})"
        )

    def as_dict(self) -> dict[str, int]:
        """Flat counts, e.g. for MLflow metrics: converted, skipped, skipped/<reason>."""
        out = {"converted": self.converted, "records_ok": self.records_ok, "skipped": self.total_skipped}
        out.update({f"skipped/{r}": c for r, c in sorted(self.skipped.items())})
        return out

    def log_summary(self) -> None:
        logger.info("%s", self.summary())


def run_records(
    records: Iterable[tuple[str, Any]],
    convert: Callable[[int, Any], Iterable[dict[str, Any]]],
    stats: ConversionStats,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Convert (record_id, record) pairs; SkipRecord is counted, never raised. Stops after `limit` samples."""
    for index, (record_id, record) in enumerate(records):
        if limit is not None and stats.converted >= limit:
            break
        try:
            samples = list(convert(index, record))
        except SkipRecord as skip:
            stats.skip(skip.reason, record_id, skip.detail)
            continue
        stats.records_ok += 1
        for sample in samples:
            stats.converted += 1
            yield sample
    stats.log_summary()


def safe_key(*parts: object) -> str:
    """A WebDataset/filesystem-safe key: parts joined by '_', anything outside [A-Za-z0-9_-] -> '-'."""
    return "_".join(re.sub(r"[^A-Za-z0-9_-]", "-", str(p)) for p in parts)


def load_json(path: PathLike) -> Any:
    """Parse a whole JSON file, raising a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({err})") from err


def require(record: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    """record[key] if `record` is a dict holding a value of type `kind`, else SkipRecord('bad_record')."""
    if not isinstance(record, dict):
        raise SkipRecord("bad_record", f"expected an object, got {type(record).__name__}")
    value = record.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise SkipRecord("bad_record", f"field {key!r} = {value!r}: expected {kind}")
    if isinstance(value, str) and not value.strip():
        raise SkipRecord("bad_record", f"field {key!r} is empty")
    return value


def image_entry(data: bytes, name: str) -> tuple[str, bytes]:
    """('jpg', original bytes) for a JPEG, else ('png', RGB PNG re-encoding); SkipRecord('bad_image') if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format == "JPEG":
                return "jpg", data
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            return "png", buffer.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise SkipRecord("bad_image", f"{name}: {err}") from err


def resolve_image(roots: Sequence[Path], relative: Any) -> Path:
    """The first existing root/relative; relative must be a safe relative path (no absolute, no '..')."""
    if not isinstance(relative, str) or not relative.strip():
        raise SkipRecord("bad_record", f"image field {relative!r}: expected a non-empty string")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise SkipRecord(
            "bad_record", f"unsafe image path {relative!r}: expected a relative path without '..'"
        )
    for root in roots:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    raise SkipRecord("missing_image", f"{relative} not found under {', '.join(str(r) for r in roots)}")


class ImageLoader:
    """Loads images by path with a one-entry cache (consecutive questions about one image read it once)."""

    def __init__(self) -> None:
        self._last: tuple[Path, tuple[str, bytes]] | None = None

    def load(self, path: Path) -> tuple[str, bytes]:
        if self._last is not None and self._last[0] == path:
            return self._last[1]
        if not path.is_file():
            raise SkipRecord("missing_image", str(path))
        entry = image_entry(path.read_bytes(), str(path))
        self._last = (path, entry)
        return entry


def normalise_conversation(turns: Any, has_image: bool) -> list[dict[str, str]]:
    """Validate LLaVA turns (human/gpt alternating, human first, gpt last) and put '<image>' at the start
    of the first human turn ('<image>\\n' + text), as LLaVA's own preprocessing does."""
    if not isinstance(turns, list) or not turns:
        raise SkipRecord("bad_record", "conversations: expected a non-empty list")
    out: list[dict[str, str]] = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise SkipRecord("bad_record", f"turn {k}: expected {{'from': str, 'value': str}}")
        if turn["from"] not in ("human", "gpt"):
            raise SkipRecord("unknown_role", f"turn {k}: role {turn['from']!r}; valid: human, gpt")
        if turn["from"] != ("human" if k % 2 == 0 else "gpt"):
            raise SkipRecord(
                "bad_conversation", f"turn {k}: role {turn['from']!r} breaks human/gpt alternation"
            )
        out.append({"from": turn["from"], "value": turn["value"]})
    if len(out) % 2:
        raise SkipRecord("bad_conversation", "the last turn must be from gpt")
    counts = [t["value"].count(IMAGE_TOKEN) for t in out]
    if not has_image:
        if sum(counts):
            raise SkipRecord("bad_conversation", f"{IMAGE_TOKEN} in a record without an image")
        return out
    if sum(counts[1:]) or counts[0] > 1:
        raise SkipRecord("bad_conversation", f"{IMAGE_TOKEN} must appear once, in the first human turn")
    rest = out[0]["value"].replace(IMAGE_TOKEN, "").strip()
    out[0]["value"] = f"{IMAGE_TOKEN}\n{rest}" if rest else IMAGE_TOKEN
    return out


def eval_turns(prompt: str, answer: str) -> list[dict[str, str]]:
    """A one-round eval conversation: human '<image>\\n' + prompt, gpt the reference answer."""
    return [{"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"}, {"from": "gpt", "value": answer}]
