"""Integration tests of the local services: the MLflow server fixture and infra/local's scripts.

The first test talks to a real `mlflow server` over HTTP (nested runs, metrics, proxied artifacts).
The second runs infra/local/up.sh, status.sh and down.sh on free ports in a temporary services
directory and checks MLflow, the S3 endpoint and the Ray dashboard over HTTP.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.mlflow_server import MlflowServer, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "infra" / "local"
SERVICES = ("mlflow", "s3", "ray")


def test_mlflow_server_tracks_nested_runs_metrics_and_artifacts(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """A parent run, a nested run, a metric history and an artifact round-trip through the HTTP server."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp_id = client.create_experiment(f"infra-{uuid.uuid4().hex[:8]}")
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
    parent = client.create_run(exp_id, run_name="workflow").info.run_id
    child = client.create_run(exp_id, run_name="pretrain", tags={"mlflow.parentRunId": parent}).info.run_id
    for step, loss in enumerate([1.5, 0.75]):
        client.log_metric(child, "loss", loss, step=step)
    note = tmp_path / "note.txt"
    note.write_text("hello deco\n")
    client.log_artifact(child, str(note), artifact_path="notes")
    client.set_terminated(child)
    client.set_terminated(parent)

    history = client.get_metric_history(child, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.5), (1, 0.75)]
    nested = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_id for r in nested] == [child]
    assert [a.path for a in client.list_artifacts(child, "notes")] == ["notes/note.txt"]
    local = client.download_artifacts(child, "notes/note.txt", dst_path=str(tmp_path / "download"))
    assert Path(local).read_text() == "hello deco\n"
    # The server, not the client, wrote the file: it travelled over HTTP.
    stored = list(mlflow_server.artifacts_dir.rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello deco\n"


def _run(
    script: str, env: dict[str, str], *args: str, timeout: float = 150
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(LOCAL / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _pids(services_dir: Path) -> dict[str, int]:
    return {
        s: int((services_dir / f"{s}.pid").read_text())
        for s in SERVICES
        if (services_dir / f"{s}.pid").exists()
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _listen_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.fixture
def services_env() -> Iterator[dict[str, str]]:
    """Environment for infra/local scripts: free ports, a temporary services dir, 1 Ray CPU."""
    services_dir = Path(tempfile.mkdtemp(prefix="deco-svc-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="dray-"))  # short: Ray's socket paths must stay short
    env = {
        **os.environ,
        "VENV": str(Path(sys.executable).parent.parent),
        "DECO_SERVICES_DIR": str(services_dir),
        "DECO_RAY_TMPDIR": str(ray_tmp),
        "DECO_RAY_CPUS": "1",
        "DECO_RAY_OBJECT_STORE_BYTES": str(128 * 1024**2),
        "DECO_READY_TIMEOUT": "120",
    }
    names = ("MLFLOW", "S3", "RAY", "RAY_DASHBOARD", "RAY_CLIENT", "RAY_AGENT")
    ports: set[int] = set()
    while len(ports) < len(names):  # distinct, in case the kernel hands out a port twice
        ports.add(free_port())
    env.update({f"DECO_{name}_PORT": str(port) for name, port in zip(names, sorted(ports), strict=True)})
    try:
        yield env
    finally:
        if any(_alive(pid) for pid in _pids(services_dir).values()):
            _run("down.sh", env)
        for pid in _pids(services_dir).values():  # last resort if down.sh failed
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(services_dir, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_local_service_scripts_start_report_and_stop(services_env: dict[str, str]) -> None:
    """up.sh starts healthy loopback-only services once, status.sh reports them, down.sh stops them."""
    import boto3

    env = services_env
    services_dir = Path(env["DECO_SERVICES_DIR"])
    up = _run("up.sh", env)
    assert up.returncode == 0, up.stderr
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in up.stdout.splitlines()
        if line.startswith("export ")
    )
    assert exports["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{env['DECO_MLFLOW_PORT']}"
    assert exports["RAY_ADDRESS"] == f"127.0.0.1:{env['DECO_RAY_PORT']}"
    assert (services_dir / "env.sh").read_text().count("export ") == len(exports)
    pids = _pids(services_dir)
    assert set(pids) == set(SERVICES) and all(map(_alive, pids.values()))

    with urllib.request.urlopen(f"{exports['MLFLOW_TRACKING_URI']}/health", timeout=5) as resp:
        assert resp.status == 200
    dashboard = exports["RAY_API_SERVER_ADDRESS"]
    with urllib.request.urlopen(f"{dashboard}/api/version", timeout=5) as resp:
        assert json.load(resp)["ray_version"] == importlib.metadata.version("ray")
    s3 = boto3.client(
        "s3",
        endpoint_url=exports["AWS_ENDPOINT_URL"],
        aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        region_name=exports["AWS_DEFAULT_REGION"],
    )
    s3.put_object(Bucket="deco", Key="probe.txt", Body=b"ok")
    assert s3.get_object(Bucket="deco", Key="probe.txt")["Body"].read() == b"ok"
    if Path("/proc/net/tcp").exists():
        for key in ("DECO_MLFLOW_PORT", "DECO_S3_PORT", "DECO_RAY_PORT", "DECO_RAY_DASHBOARD_PORT"):
            addresses = _listen_addresses(int(env[key]))
            assert addresses and addresses <= LOOPBACK, (key, addresses)

    _assert_jobs_run_the_venv_python(dashboard, Path(env["VENV"]))

    again = _run("up.sh", env)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already running") == len(SERVICES)
    assert _pids(services_dir) == pids

    status = _run("status.sh", env)
    assert status.returncode == 0, status.stdout + status.stderr
    rows = [
        line.split() for line in status.stdout.splitlines() if line.split()[:1] in ([s] for s in SERVICES)
    ]
    assert [(r[0], r[1], r[-1]) for r in rows] == [(s, "running", "ok") for s in SERVICES]

    down = _run("down.sh", env)
    assert down.returncode == 0, down.stderr
    assert not any(map(_alive, pids.values()))
    assert _run("status.sh", env).returncode == 3


def _assert_jobs_run_the_venv_python(dashboard: str, venv: Path) -> None:
    """A Ray job on the local head resolves `python` to the project venv (which has the project's deps)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    job = client.submit_job(entrypoint='python -c "import sys, omegaconf; print(\'exe=\' + sys.prefix)"')
    deadline = time.monotonic() + 120
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job} did not finish"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs
    assert f"exe={venv}" in logs or f"exe={venv.resolve()}" in logs, logs


def test_scripts_reject_unknown_service_names(tmp_path: Path) -> None:
    """up.sh and down.sh refuse an unknown service name, listing the valid ones, and start nothing."""
    env = {**os.environ, "DECO_SERVICES_DIR": str(tmp_path)}
    for script in ("up.sh", "down.sh"):
        result = _run(script, env, "postgres", timeout=30)
        assert result.returncode == 1
        assert "unknown service 'postgres' (valid: mlflow s3 ray)" in result.stderr
    assert not list(tmp_path.glob("*.pid"))
