"""Cluster submission: run pipeline stages as Ray Jobs, one job per stage, in order, over the Jobs HTTP API.

Each job runs ``python -m pipelines.workflow.job <stage> --config ... [overrides]`` in a copy of this repository
(the runtime env's ``working_dir``); stages share their state through ``pipeline.root`` (a path every node can
read, or s3://: a relative root is refused before anything is submitted). With ``wait`` the client streams each
job's log, waits for a terminal status and stops at the first failure; without it the stages go out as one job
that runs them in sequence, so the client may leave.

MLflow: the submitter creates one parent run for the submitted workflow; every job gets its id
(``--parent-run-id``, not a secret) and nests its stage run under it. Ray job ids are tags: ``deco.ray_job_id``
on each stage run, ``deco.ray_job.<stage>`` on the parent. With ``wait`` the submitter ends the parent (FAILED
when a job did not succeed); without it the job's last stage does.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deco_core.config import CONF_DIR, PipelineConfig
from pipelines.ops.runtime import PASSTHROUGH_ENV, check_no_secrets, passthrough_env
from pipelines.workflow.probe import ray_problem

log = logging.getLogger(__name__)
JOB_MODULE = "pipelines.workflow.job"  # the per-stage job entry
REPO_ROOT = Path(__file__).resolve().parents[2]
EXCLUDES = [".venv", ".git", "runs", "mlruns*", ".services", "*.db", "tests",
            "__pycache__", ".pytest_cache", ".ruff_cache"]
#: Sent to every job besides the service locations (runtime.PASSTHROUGH_ENV); never a credential.
ENV_NAMES = ("DS_ACCELERATOR", "RAY_DATA_DISABLE_PROGRESS_BARS")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
POLL_S = 2.0


class SubmitError(RuntimeError):
    """The cluster could not be reached, refused us, or the request was invalid; the message says which."""


@dataclass
class SubmittedJob:
    """One stage's job: status is a Ray job status, SUBMITTED (not waited for) or NOT_SUBMITTED."""

    stage: str
    job_id: str
    status: str
    entrypoint: str = ""
    seconds: float = 0.0
    message: str = ""
    parent_run_id: str = ""


def job_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a job receives from the client's environment: the service locations (S3 endpoint and region, MLflow
    tracking URI: runtime.PASSTHROUGH_ENV) and ENV_NAMES. Never a credential (access keys, secret keys, tokens,
    passwords): the cluster's pods read those from their own environment (a Kubernetes Secret, infra/k8s)."""
    return passthrough_env(environ, (*PASSTHROUGH_ENV, *ENV_NAMES))


def job_runtime_env(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The repository as working_dir (without venv, VCS, run outputs, databases, tests) plus ``job_env()``.

    ``extra`` is merged on top; its ``env_vars`` extend (and win over) the pass-through ones, and may not name a
    credential (SubmitError).
    """
    from deco_core.config import ConfigError

    extra = dict(extra or {})
    extra_env = {k: str(v) for k, v in extra.pop("env_vars", {}).items()}
    try:
        check_no_secrets(extra_env, "the job's runtime_env env_vars")
    except ConfigError as exc:
        raise SubmitError(str(exc)) from None
    env_vars = {**job_env(), **extra_env}
    return {"working_dir": str(REPO_ROOT), "excludes": list(EXCLUDES), "env_vars": env_vars, **extra}


def config_argument(config: str) -> str:
    """The ``--config`` value as the job sees it: a path relative to the shipped repository, or a conf ref."""
    path = Path(config)
    if path.is_file():
        try:
            return str(path.resolve().relative_to(REPO_ROOT))
        except ValueError:
            raise SubmitError(f"config file {config} lies outside {REPO_ROOT}, the working_dir shipped to the "
                              "cluster; put it under conf/ (or pass a conf ref such as pipeline/tiny)") from None
    if (CONF_DIR / f"{config}.yaml").is_file():
        return config
    raise SubmitError(f"config {config!r}: no such file, and no conf ref {CONF_DIR / (config + '.yaml')}")


def stage_entrypoint(stage: str, config: str, overrides: list[str], python: str = "python") -> str:
    """The shell command of one stage's job (every argument shell-quoted)."""
    return shlex.join([python, "-m", JOB_MODULE, stage, "--config", config, *overrides])


def connect(address: str):
    """A JobSubmissionClient for the dashboard at ``address``; clear errors for unreachable and auth failures."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = address if "://" in address else f"http://{address}"
    try:
        return JobSubmissionClient(url)
    except AuthenticationError as exc:
        raise SubmitError(_auth_hint(url, exc)) from None
    except ConnectionError:
        raise SubmitError(f"cannot reach the Ray Jobs API at {url}: is the head running and is that its dashboard "
                          "address (default port 8265; `ray status` on the head shows it)?") from None


def _auth_hint(url: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"the Ray cluster at {url} refused the request ({first}). The cluster uses token authentication: "
            "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token; a local development head "
            "started with RAY_AUTH_MODE=disabled needs RAY_AUTH_MODE=disabled on the client too")


def submit_pipeline(address: str, config: str, overrides: list[str], stages: list[str], wait: bool = True,
                    runtime_env: dict[str, Any] | None = None, *, python: str = "python",
                    timeout_s: float | None = None) -> list[SubmittedJob]:
    """Submit ``stages`` (in order) to the cluster at ``address``; returns one SubmittedJob per stage.

    With ``wait``: one job per stage; each job's log is streamed into this process's log, and a failed,
    stopped or timed-out job ends the run (later stages come back NOT_SUBMITTED). Without ``wait``: one job
    runs the stages one after the other (``&&``), since the Jobs API has no dependencies between jobs.
    """
    valid = PipelineConfig().stages
    unknown = [s for s in stages if s not in valid]
    if unknown or not stages:
        raise SubmitError(f"stages {stages}: expected a non-empty list among {valid}")
    cfg_arg = config_argument(config)
    cfg = submitted_config(config, overrides)
    problem = ray_problem(address if "://" in address else f"http://{address}", setting="--address",
                          service="Ray Jobs API")
    if problem:
        raise SubmitError(problem.line())
    client = connect(address)
    env = job_runtime_env(runtime_env)
    parent = SubmittedRun(cfg, address)
    log.info("submitting %s to %s (env passed through: %s; MLflow parent run %s)", ", ".join(stages), address,
             ", ".join(sorted(env["env_vars"])) or "none", parent.run_id)
    if not wait:
        job_id = _submission_id("+".join(stages))
        commands = [stage_entrypoint(s, cfg_arg, [*parent.args(job_id, last=i == len(stages) - 1), *overrides],
                                     python) for i, s in enumerate(stages)]
        parent.tag_job(stages, job_id)
        with parent.failed_on_error():
            _submit(client, "+".join(stages), job_id, " && ".join(commands), env, config)
        return [SubmittedJob(s, job_id, "SUBMITTED", cmd, parent_run_id=parent.run_id)
                for s, cmd in zip(stages, commands, strict=True)]
    jobs: list[SubmittedJob] = []
    with parent.failed_on_error():
        for stage in stages:
            job_id = _submission_id(stage)
            command = stage_entrypoint(stage, cfg_arg, [*parent.args(job_id), *overrides], python)
            if jobs and jobs[-1].status != "SUCCEEDED":
                jobs.append(SubmittedJob(stage, "-", "NOT_SUBMITTED", command, parent_run_id=parent.run_id))
                continue
            started = time.perf_counter()
            parent.tag_job([stage], job_id)
            _submit(client, stage, job_id, command, env, config)
            status, message = wait_for_job(client, job_id, stage, timeout_s)
            jobs.append(SubmittedJob(stage, job_id, status, command, time.perf_counter() - started, message,
                                     parent.run_id))
            log.info("job %s (%s) %s after %.0fs%s", job_id, stage, status, jobs[-1].seconds,
                     f": {message}" if status != "SUCCEEDED" and message else "")
    parent.end(all(j.status == "SUCCEEDED" for j in jobs))
    return jobs


def submitted_config(config: str, overrides: list[str]):
    """The composed config, refused (SubmitError) when ``pipeline.root`` is relative: each job would resolve it
    inside its own unpacked working_dir on whichever node runs it."""
    from deco_core.config import ConfigError, compose
    from deco_core.data.storage import is_remote

    try:
        cfg = compose(config, list(overrides))
    except ConfigError as exc:
        raise SubmitError(str(exc)) from None
    root = cfg.pipeline.root
    if not (is_remote(root) or Path(root).is_absolute()):
        raise SubmitError(f"config key 'pipeline.root' = {root!r} is a relative path, which each Ray job would "
                          "resolve inside its own working directory on the cluster: use an absolute path on "
                          "storage every node shares, or s3://")
    return cfg


class SubmittedRun:
    """The MLflow parent run of one submitted workflow, in the store the jobs log to."""

    def __init__(self, cfg, address: str) -> None:
        from mlflow import MlflowClient

        from deco_core.tracking import get_or_create_run, log_key_settings, resolve_tracking_uri
        from pipelines.workflow.fingerprint import code_version
        from pipelines.workflow.probe import tracking_problem

        self.tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.pipeline.root)
        problem = tracking_problem(self.tracking_uri, bool(cfg.tracking.tracking_uri))
        if problem:
            raise SubmitError(problem.line())
        self.client = MlflowClient(self.tracking_uri)
        name = f"{cfg.pipeline.name}-submitted-{int(time.time())}-{uuid.uuid4().hex[:6]}"
        self.run_id = get_or_create_run(self.tracking_uri, cfg.tracking.experiment, name, cfg.pipeline.root,
                                        tags={"deco.kind": "workflow", "deco.submitted_to": address,
                                              "deco.code_version": code_version()})
        log_key_settings(self.client, self.run_id, cfg)

    def args(self, job_id: str, last: bool = False) -> list[str]:
        """The stage entrypoint's arguments that nest its run under this one (and end it, for ``last``)."""
        return ["--parent-run-id", self.run_id, "--ray-job-id", job_id, *(["--end-parent"] if last else [])]

    def tag_job(self, stages: list[str], job_id: str) -> None:
        for stage in stages:
            self.client.set_tag(self.run_id, f"deco.ray_job.{stage}", job_id)

    def end(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")

    @contextlib.contextmanager
    def failed_on_error(self) -> Iterator[None]:
        """An error while submitting or waiting ends the run FAILED; an interrupt leaves it to the running job."""
        try:
            yield
        except KeyboardInterrupt:
            raise
        except BaseException:
            self.end(False)
            raise


def _submission_id(label: str) -> str:
    return f"deco-{label.replace('+', '-')[:60]}-{uuid.uuid4().hex[:8]}"


def _submit(client, label: str, submission_id: str, entrypoint: str, env: dict[str, Any], config: str) -> str:
    from ray.exceptions import AuthenticationError

    try:
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=env, submission_id=submission_id,
                                   metadata={"deco.stage": label, "deco.config": config})
    except AuthenticationError as exc:
        raise SubmitError(_auth_hint(client.get_address(), exc)) from None
    except ConnectionError:
        raise SubmitError(f"lost the Ray Jobs API at {client.get_address()} while submitting {label}") from None
    log.info("submitted %s as job %s: %s", label, job_id, entrypoint)
    return job_id


def wait_for_job(client, job_id: str, label: str, timeout_s: float | None = None) -> tuple[str, str]:
    """Poll status and logs every POLL_S seconds, logging new log lines; (terminal status, job message)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen = 0
    try:
        while True:
            status = str(client.get_job_status(job_id).value)
            seen = _log_new_lines(client, job_id, label, seen)
            if status in TERMINAL:
                seen = _log_new_lines(client, job_id, label, seen, final=True)
                return status, client.get_job_info(job_id).message or ""
            if deadline is not None and time.monotonic() > deadline:
                client.stop_job(job_id)
                log.warning("job %s (%s) exceeded %.0fs: stop requested", job_id, label, timeout_s)
                return "STOPPED", f"timed out after {timeout_s:.0f}s"
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        log.warning("interrupted: job %s keeps running on the cluster (stop it with `ray job stop %s`)",
                    job_id, job_id)
        raise


def _log_new_lines(client, job_id: str, label: str, seen: int, final: bool = False) -> int:
    """Log the complete lines after character ``seen`` (every line when ``final``); returns the new offset."""
    text = client.get_job_logs(job_id)
    new = text[seen:]
    if not final:
        new = new[: new.rfind("\n") + 1]
    for line in new.splitlines():
        log.info("[%s] %s", label, line)
    return seen + len(new)
