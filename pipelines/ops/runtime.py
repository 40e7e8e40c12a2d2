"""Process-level runtime for pipeline entry points: Ray initialisation (local in-process or a cluster address)
with the environment our workers need, and quiet defaults for progress bars and usage stats."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from deco_core.config import Config
from deco_core.data.ray_data import warm_up

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


#: The client settings a cluster's jobs and workers may receive from this process: where the services are, never
#: how to log in to them. Credentials reach a cluster's pods from their own environment (a Kubernetes Secret, see
#: infra/k8s); a local Ray's workers inherit the driver's environment. A runtime env is written to Ray's logs.
PASSTHROUGH_ENV = {
    "AWS_ENDPOINT_URL": "S3 endpoint",
    "AWS_ENDPOINT_URL_S3": "S3 endpoint (S3 only)",
    "AWS_DEFAULT_REGION": "S3 region",
    "AWS_REGION": "S3 region",
    "MLFLOW_TRACKING_URI": "tracking server",
    "MLFLOW_S3_ENDPOINT_URL": "artifact store endpoint",
}


def passthrough_env(environ: Mapping[str, str] | None = None, names: Iterable[str] = PASSTHROUGH_ENV) -> dict[str, str]:
    """The variables ``names`` (default PASSTHROUGH_ENV) set in ``environ`` (default: this process); a URL holding a
    password is left out with a warning naming the variable."""
    from deco_core.secrets import has_url_password

    env = os.environ if environ is None else environ
    out = {}
    for name in names:
        if not env.get(name):
            continue
        if has_url_password(env[name]):
            log.warning("%s holds a URL with a password: not sent to Ray; give the cluster its own value", name)
            continue
        out[name] = env[name]
    return out


def check_no_secrets(env_vars: Mapping[str, Any], where: str) -> None:
    """Refuse credential-named variables (AWS_SECRET_ACCESS_KEY, *_TOKEN, ...) in a runtime env."""
    from deco_core.config import ConfigError
    from deco_core.secrets import is_secret_name

    secret = sorted(k for k in env_vars if is_secret_name(k))
    if secret:
        raise ConfigError(f"{where} sets {', '.join(secret)}: credentials never travel in a Ray runtime env (Ray "
                          "writes it to its logs); give the workers their own environment (a Kubernetes Secret on "
                          "a cluster, the driver's environment for a local Ray)")


def worker_env(cfg: Config, cluster: bool = False) -> dict[str, str]:
    """Environment for Ray workers: CPU DeepSpeed unless training on GPUs; on a cluster also the service
    locations (PASSTHROUGH_ENV). Never a credential: local workers inherit them, a cluster's pods hold their own."""
    env = dict(WORKER_ENV)
    if cfg.pretrain.use_gpu or cfg.finetune.use_gpu:
        env.pop("DS_ACCELERATOR")
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "4")
    if cluster:
        env.update(passthrough_env())
    configured = cfg.ray.runtime_env.get("env_vars", {})
    check_no_secrets(configured, "config key 'ray.runtime_env.env_vars'")
    env.update({k: str(v) for k, v in configured.items()})
    return env


def ensure_ray(cfg: Config) -> None:
    """ray.init once per process: in-process local Ray (logical CPUs, bounded object store) or ``ray.address``."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # MLflow draws a download bar per artifact set (the register stage reads the export back): a dozen redrawn
    # lines in a log, nothing to act on
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if ray.is_initialized():
        return
    in_job = bool(os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS"))
    env = worker_env(cfg, cluster=bool(cfg.ray.address or in_job))
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
    started = time.perf_counter()
    try:  # once per workflow: every stage's preprocessing then starts on warm processes
        warm_up(max(1, min(int(cfg.ray.num_cpus or os.cpu_count() or 1), os.cpu_count() or 1)))
    except Exception as exc:  # an optimisation only: the stages start their own processes if this failed
        log.warning("Ray Data warm-up failed (%s: %s); continuing without it", type(exc).__name__, exc)
    log.info("started local Ray with %s logical CPUs (Ray Data warmed in %.1fs)", cfg.ray.num_cpus,
             time.perf_counter() - started)
