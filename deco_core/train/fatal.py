"""Errors a retry cannot fix end the stage at once.

Ray Train's ``FailureConfig`` retries every worker error, and has no public way to mark one final. A worker
that fails with a deterministic error (too many bad samples, an invalid setting) records it beside the run's
checkpoints before raising; a retried attempt finds the record and returns at once, before reading any data
(so nothing is counted twice); the driver then raises the original error with its original message. Worker
deaths and other errors keep their retries.
"""

from __future__ import annotations

import json
import logging

from deco_core.config import ConfigError
from deco_core.data.ray_data import DataQualityError
from deco_core.data.storage import StorageConfig, get_filesystem, join_uri
from deco_core.train.integrity import CheckpointIntegrityError

log = logging.getLogger(__name__)
FATAL_FILE = ".deco-fatal.json"

# error type name -> class re-raised by the driver; order matters (first match wins when recording)
# fmt: off
NON_RETRYABLE: dict[str, type[Exception]] = {
    "DataQualityError":         DataQualityError,   # bad fraction over data.max_bad_fraction: the same data fails again
    "ConfigError":              ConfigError,        # an invalid setting
    "CheckpointIntegrityError": CheckpointIntegrityError,  # a modified checkpoint stays modified
    "ValueError":               ValueError,         # invalid values and shapes (deterministic in our code)
}
# fmt: on


def fatal_uri(storage_path: str, run_name: str) -> str:
    return join_uri(storage_path, run_name, FATAL_FILE)


def is_non_retryable(exc: BaseException) -> bool:
    return isinstance(exc, tuple(NON_RETRYABLE.values()))


def record_fatal(uri: str, exc: BaseException, rank: int, storage: StorageConfig | None = None) -> None:
    """Write the error (type and message) once; the first rank to fail wins."""
    name = next(n for n, cls in NON_RETRYABLE.items() if isinstance(exc, cls))
    fs, path = get_filesystem(uri, storage)
    if fs.exists(path):
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(json.dumps({"type": name, "message": str(exc), "rank": rank}))
    log.error("rank %d: %s is not retryable; the stage ends (%s)", rank, name, exc)


def read_fatal(uri: str, storage: StorageConfig | None = None) -> dict | None:
    fs, path = get_filesystem(uri, storage)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.loads(f.read())


def clear_fatal(uri: str, storage: StorageConfig | None = None) -> None:
    """Forget a previous run's record (a new ``fit`` of the stage)."""
    fs, path = get_filesystem(uri, storage)
    if fs.exists(path):
        fs.rm(path)


def raise_recorded(uri: str, storage: StorageConfig | None = None, cause: BaseException | None = None) -> None:
    """Raise the recorded error as its own type with its own message, if there is one."""
    rec = read_fatal(uri, storage)
    if rec is None:
        return
    cls = NON_RETRYABLE.get(rec.get("type"), RuntimeError)
    raise cls(rec["message"]) from cause
