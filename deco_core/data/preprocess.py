"""Raw shard record -> (key, json meta, PIL image | None), with every failure mapped to a counted SampleError.

Records come either from Ray's ``read_webdataset(decoder=None)`` (member bytes) or from ``shards.iter_samples``
(json already parsed, images as bytes); both shapes are accepted.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from PIL import Image

from deco_core.data.conversation import SampleError
from deco_core.data.transforms import decode_image

IMAGE_KEYS = ("png", "jpg", "jpeg")


def _as_bytes(value: Any) -> bytes | None:
    """Member payload as bytes, or None when absent (Ray fills a member missing from some rows with NaN)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    return None


def decode_meta(record: dict[str, Any], key: str) -> dict[str, Any]:
    raw = record.get("json")
    if raw is None:
        raise SampleError("missing_keys", f"sample {key}: no 'json' member")
    if isinstance(raw, dict):
        meta = raw
    else:
        try:
            meta = json.loads((_as_bytes(raw) or b"").decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise SampleError("bad_json", f"sample {key}: json member is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("conversations"), list):
        raise SampleError("missing_keys", f"sample {key}: json needs a 'conversations' list")
    return meta


def decode_record(record: dict[str, Any]) -> tuple[str, dict[str, Any], Image.Image | None]:
    """Split a raw record into its key, parsed json and decoded image (None for text-only samples)."""
    key = str(record.get("__key__", "?"))
    meta = decode_meta(record, key)
    image = None
    for ext in IMAGE_KEYS:
        data = _as_bytes(record.get(ext))
        if data is not None:
            image = decode_image(data, key)
            break
    return key, meta, image
