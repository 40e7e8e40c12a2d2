"""Process-level runtime for pipeline entry points: Ray initialisation (local in-process or a cluster address)
with the environment our workers need, and quiet defaults for progress bars and usage stats."""

from __future__ import annotations

import logging
import os

from deco_core.config import Config

log = logging.getLogger(__name__)
WORKER_ENV = {
    "DS_ACCELERATOR": "cpu",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # MLflow's INFO lines on every worker (database set-up, "skip GPU metrics") repeat per stage.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # Ray Train's controller polls its workers this often (default 2 s); a stage ends, and a reported
    # checkpoint is collected, on the next poll, so a short stage on a small machine pays up to 2 s each time.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


# Settings for an in-process local Ray only (a cluster keeps Ray's defaults). Every actor is a process, and
# process starts are most of a stage's fixed cost on a small machine.
LOCAL_ONLY_ENV = {
    # Ray Train's preemption watcher polls node drain state; one local node is never drained or preempted.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def ray_data_logging_config(console_level: str) -> str:
    """A Ray Data logging config file (Ray's own layout) whose console shows ``console_level`` and up, while the
    session's ``ray-data.log`` files keep every DEBUG line; returns its path. Ray Data prints each dataset's
    execution plan and start/finish lines at INFO, several per stage."""
    import tempfile

    import yaml

    config = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"ray": {"format": "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}},
        "filters": {"console_filter": {"()": "ray.data._internal.logging.HiddenRecordFilter"}},
        "handlers": {
            "file": {"class": "ray.data._internal.logging.SessionFileHandler", "formatter": "ray",
                     "filename": "ray-data.log"},
            "console": {"class": "ray._private.log.PlainRayHandler", "formatter": "ray", "level": console_level,
                        "filters": ["console_filter"]},
        },
        "loggers": {
            "ray.data": {"level": "DEBUG", "handlers": ["file", "console"], "propagate": False},
            # "Progress bars disabled" is a WARNING, once per process, about the setting we chose on purpose.
            "ray.data._internal.progress": {"level": "ERROR", "handlers": ["file", "console"], "propagate": False},
        },
    }
    fd, path = tempfile.mkstemp(prefix="deco-ray-data-logging-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f)
    return path


def worker_env(cfg: Config) -> dict[str, str]:
    """Environment for Ray workers: CPU DeepSpeed unless training on GPUs; secrets pass through from the env."""
    env = dict(WORKER_ENV)
    if cfg.pretrain.use_gpu or cfg.finetune.use_gpu:
        env.pop("DS_ACCELERATOR")
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "4")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                 "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_S3_ENDPOINT_URL"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    env.update({k: str(v) for k, v in cfg.ray.runtime_env.get("env_vars", {}).items()})
    return env


def ensure_ray(cfg: Config) -> None:
    """ray.init once per process: in-process local Ray (logical CPUs, bounded object store) or ``ray.address``."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if ray.is_initialized():
        return
    env = worker_env(cfg)
    in_job = bool(os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS"))
    if cfg.ray.address or in_job:
        # Inside a submitted job the job's runtime_env already applies; merging another one is refused.
        ray.init(address=cfg.ray.address or os.environ.get("RAY_ADDRESS", "auto"),
                 runtime_env=None if in_job else {"env_vars": env}, log_to_driver=True)
        log.info("connected to Ray cluster at %s", cfg.ray.address or "auto")
        return
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    os.environ.update({k: v for k, v in LOCAL_ONLY_ENV.items() if k not in os.environ})
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", ray_data_logging_config(cfg.ray.log_level))
    ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False,
             object_store_memory=cfg.ray.object_store_memory_mb * 1024**2 or None,
             runtime_env={"env_vars": env, "worker_process_setup_hook": "deco_core.logs.quiet_ray_worker"},
             log_to_driver=True)
    log.info("started local Ray with %s logical CPUs", cfg.ray.num_cpus)
