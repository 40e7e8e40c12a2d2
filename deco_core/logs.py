"""Rank-aware logging: rank 0 logs at INFO, other ranks at WARNING, the rank in every line."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def current_rank() -> int:
    """The distributed rank from the environment (0 outside distributed runs)."""
    for var in ("RANK", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def setup_logging(rank: int | None = None, level: int | None = None) -> None:
    """Configure the ``deco_core`` and ``pipelines`` loggers once per process (idempotent)."""
    rank = current_rank() if rank is None else rank
    level = level if level is not None else (logging.INFO if rank == 0 else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_RankFilter(rank))
    for name in ("deco_core", "pipelines"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
