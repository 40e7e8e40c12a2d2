"""The root run lock and run liveness (pipelines/workflow: lock, liveness), the environment that Ray
workers and submitted jobs receive (no credentials), and the service probes on closed ports."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deco_core.config import ConfigError, compose
from pipelines.workflow.liveness import STALE_AFTER_S, Owner, owner_alive, process_start_time
from pipelines.workflow.lock import RootLock, RootLocked

SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAUNITTESTKEY0001", "AWS_SECRET_ACCESS_KEY": "unit-secret-value-0001",
           "AWS_SESSION_TOKEN": "unit-session-token-0001", "MLFLOW_TRACKING_TOKEN": "unit-mlflow-token-0001",
           "MLFLOW_TRACKING_PASSWORD": "unit-mlflow-password-01"}
LOCATIONS = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-west-1",
             "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def _owner(pid: int, proc_start: float | None) -> Owner:
    return Owner(socket.gethostname(), pid, proc_start, time.time() - 5)


def _write_lock(root: Path, owner: Owner, heartbeat: float | None = None) -> Path:
    path = root / "workflow" / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"owner": owner.to_dict(), "heartbeat": heartbeat or time.time()}))
    return path


def test_a_live_holder_stops_the_second_taker_naming_it_and_the_lock(tmp_path, sleeper):
    _write_lock(tmp_path, _owner(sleeper.pid, process_start_time(sleeper.pid)))
    with pytest.raises(RootLocked) as err:
        RootLock(str(tmp_path)).acquire()
    message = str(err.value)
    assert f"host {socket.gethostname()} pid {sleeper.pid} since " in message
    assert str(tmp_path / "workflow" / "run.lock") in message and "\n" not in message


def test_a_dead_holder_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(tmp_path, _owner(dead.pid, 1.0))
    with caplog.at_level(logging.WARNING, logger="pipelines.workflow.lock"), RootLock(str(tmp_path)) as lock:
        assert lock.holder()[0].pid == os.getpid()
        assert any("taking over the stale run lock" in r.getMessage() and "process gone" in r.getMessage()
                   for r in caplog.records)
    assert lock.holder() is None  # released


def test_a_reused_pid_is_not_the_holder(tmp_path, sleeper):
    """A live pid whose process started at another time is not the process that wrote the lock."""
    _write_lock(tmp_path, _owner(sleeper.pid, process_start_time(sleeper.pid) - 1000))
    with RootLock(str(tmp_path)) as lock:
        assert lock.holder()[0].pid == os.getpid()


def test_the_lock_is_reentrant_in_one_process_and_released_by_the_last_exit(tmp_path):
    with RootLock(str(tmp_path)) as outer:
        with RootLock(str(tmp_path)):
            pass
        assert outer.holder()[0].pid == os.getpid()
    assert outer.holder() is None


def test_another_hosts_owner_lives_only_while_its_heartbeat_is_fresh():
    far = Owner("another-host", 1, 1.0, time.time())
    assert far.alive() is None
    assert owner_alive(far, time.time() - 1)
    assert not owner_alive(far, time.time() - STALE_AFTER_S - 1)
    assert not owner_alive(None, time.time())


def test_worker_env_holds_no_credentials_local_or_cluster(monkeypatch):
    from pipelines.ops.runtime import worker_env

    for name, value in {**SECRETS, **LOCATIONS}.items():
        monkeypatch.setenv(name, value)
    cfg = compose("pipeline/tiny")
    local, cluster = worker_env(cfg), worker_env(cfg, cluster=True)
    for env in (local, cluster):
        assert not set(SECRETS) & set(env) and not set(SECRETS.values()) & set(env.values())
    assert {k: cluster[k] for k in LOCATIONS} == LOCATIONS
    with pytest.raises(ConfigError, match=r"ray.runtime_env.env_vars' sets AWS_SECRET_ACCESS_KEY"):
        worker_env(compose("pipeline/tiny", ["ray.runtime_env={env_vars: {AWS_SECRET_ACCESS_KEY: x}}"]))


def test_submitted_jobs_receive_service_locations_and_never_credentials(monkeypatch):
    from pipelines.ops.submit import SubmitError, job_runtime_env

    for name, value in {**SECRETS, **LOCATIONS}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    env_vars = job_runtime_env()["env_vars"]
    assert {k: env_vars[k] for k in LOCATIONS} == LOCATIONS
    assert "MLFLOW_TRACKING_USERNAME" not in env_vars
    assert not set(SECRETS) & set(env_vars) and not set(SECRETS.values()) & set(env_vars.values())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:pa55word@mlflow:5000")
    assert "MLFLOW_TRACKING_URI" not in job_runtime_env()["env_vars"]
    with pytest.raises(SubmitError, match="MLFLOW_TRACKING_TOKEN"):
        job_runtime_env({"env_vars": {"MLFLOW_TRACKING_TOKEN": "x"}})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_probes_name_the_endpoint_and_the_setting_on_a_closed_port(monkeypatch):
    from pipelines.workflow.probe import ServiceUnreachable, probe_services, ray_problem

    port = _closed_port()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["AWS_SECRET_ACCESS_KEY"])
    cfg = compose("pipeline/tiny", [f"tracking.tracking_uri=http://user:pw-0001@127.0.0.1:{port}"])
    with pytest.raises(ServiceUnreachable) as err:
        probe_services(cfg, cfg.tracking.tracking_uri, timeout=2)
    assert str(err.value) == (f"cannot reach the MLflow tracking server at http://127.0.0.1:{port} (connection "
                              "refused): start it or change tracking.tracking_uri")
    cfg = compose("pipeline/tiny", ["pipeline.root=s3://bucket/run", f"data.storage.endpoint_url=http://127.0.0.1:{port}"])
    with pytest.raises(ServiceUnreachable, match=rf"S3 endpoint for bucket bucket \(pipeline.root\) at "
                                                 rf"http://127.0.0.1:{port} \(connection refused\): start it or "
                                                 r"change data.storage.endpoint_url"):
        probe_services(cfg, None, timeout=2)
    problem = ray_problem(f"127.0.0.1:{port}", timeout=2)
    assert problem is not None and problem.setting == "ray.address" and "connection refused" in problem.line()
    assert ray_problem("auto") is None
