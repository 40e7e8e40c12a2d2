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


# Ray-internal loggers silenced in every Ray worker process, with the reason.
# fmt: off
QUIET_WORKER_LOGGERS = {
    # Ray Train's detached placement-group cleaner asks the State API (served by the dashboard, which a local
    # in-process Ray runs without) whether the controller is alive, and warns on every failed poll — hundreds
    # of identical lines per stage. Its cleanup still works: the controller removes its placement group itself.
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
}
# Ray-internal loggers named by their module's file path (``logging.getLogger(__file__)``), silenced the same way.
# fmt: off
QUIET_WORKER_FILE_LOGGERS = {
    # "Reporting training result N: TrainingReport(checkpoint=..., metrics={...})" at INFO on every checkpoint
    # report, a multi-line dump per checkpoint; the stage summary and MLflow already hold these metrics.
    "ray.train.v2._internal.execution.context": logging.WARNING,
}
# (category, message start) of third-party warnings with nothing for a user to act on.
QUIET_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, "`torch.distributed.all_gather_into_tensor` is deprecated"),  # raised inside DeepSpeed
    (DeprecationWarning, "`ExecutionOptions.exclude_resources` is deprecated"),  # set inside Ray Train
)
# fmt: on


def quiet_ray_worker() -> None:
    """``worker_process_setup_hook`` of our Ray runtime env: apply QUIET_WORKER_LOGGERS and QUIET_WARNINGS."""
    import importlib.util
    import re
    import warnings

    for name, level in QUIET_WORKER_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for module, level in QUIET_WORKER_FILE_LOGGERS.items():
        top, _, rest = module.partition(".")
        spec = importlib.util.find_spec(top)  # the package is imported already: nothing else is imported here
        for root in (spec.submodule_search_locations or []) if spec else []:
            logging.getLogger(os.path.join(root, *rest.split(".")) + ".py").setLevel(level)
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
