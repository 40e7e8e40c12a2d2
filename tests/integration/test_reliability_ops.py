"""Operational faults with real processes: credentials kept out of Ray's logs on a moto S3 root, two concurrent
runs on one root, a SIGKILLed driver, and services on closed ports. Each run is a real ``deco pipeline run``
subprocess with its own Ray temp folder (so its logs can be searched) and the smallest data that exercises it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from deco_core.config import compose
from tests.fixtures.mlflow_server import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SMALL_DATA = ["data.caption_samples=64", "data.instruct_samples=64", "data.format_samples=64",
              "data.eval_samples=16", "data.samples_per_shard=64"]
# prepare_data on this much data runs for many seconds: long enough to be caught running, and killed then.
LARGE_DATA = ["data.caption_samples=40000", "data.instruct_samples=4000", "data.format_samples=20000",
              "data.eval_samples=16", "data.samples_per_shard=500"]
RUN_TIMEOUT_S = 120  # a guard against hangs, not a measurement


def _deco(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu",
           "RAY_AUTH_MODE": "disabled", "COLUMNS": "400"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **extra}


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = log.open("wb")
    return subprocess.Popen(_deco(*args), env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _wait_running(state_file: Path, stage: str, proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its stage was seen running"
        try:
            rec = json.loads(state_file.read_text())["stages"].get(stage, {})
        except (OSError, ValueError):
            rec = {}
        if rec.get("status") == "running":
            return rec
        time.sleep(0.1)
    raise AssertionError(f"stage {stage} never ran")


def _files_holding(folder: Path, secrets: list[str]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += [f"{path}: {s[:6]}..." for s in secrets if s.encode() in data]
    return hits


@pytest.mark.slow
def test_credentials_reach_no_ray_log_mlflow_store_or_stdout(s3_server, s3_bucket, mlflow_server, tmp_path):
    """A pretrain on local Ray with an S3 root and recognisable AWS credentials: the values appear in no file of
    Ray's temp folder (session logs, runtime env agent), the MLflow server's store or artifacts, nor stdout."""
    secrets = [f"AKIARELOPS{uuid.uuid4().hex[:10].upper()}", f"relops-secret-{uuid.uuid4().hex}"]
    ray_tmp = Path(tempfile.mkdtemp(prefix="drel-"))  # short: Ray's socket paths must stay short
    env = _env(AWS_ACCESS_KEY_ID=secrets[0], AWS_SECRET_ACCESS_KEY=secrets[1], AWS_ENDPOINT_URL=s3_server.endpoint_url,
               RAY_TMPDIR=str(ray_tmp))
    args = ["pipeline", "run", "--config", "conf/pipeline/tiny.yaml", f"pipeline.root={s3_bucket}/run",
            f"tracking.tracking_uri={mlflow_server.uri}", "pipeline.stages=[prepare_data,pretrain]", *SMALL_DATA,
            "pretrain.max_steps=2", "pretrain.checkpoint_every=2", "tracking.system_metrics=false"]
    try:
        done = subprocess.run(_deco(*args), env=env, cwd=REPO, capture_output=True, timeout=600)
        output = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode == 0, output[-3000:]
        sessions = list((ray_tmp / "ray").glob("session_*/logs"))
        assert sessions and any(p.name.startswith("runtime_env") for p in sessions[0].iterdir()), sessions
        assert not [s for s in secrets if s in output]
        assert _files_holding(ray_tmp, secrets) == []
        assert _files_holding(mlflow_server.root, secrets) == []
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


def test_a_second_run_on_a_root_stops_at_once_naming_the_holder(tmp_path):
    """Two `deco pipeline run` on one fresh root at once: one holds the root, the other stops with exit code 3
    and one line naming the holder's host, pid and start and the lock file; the holder's run is not disturbed."""
    root = tmp_path / "root"
    args = ["pipeline", "run", "--config", "conf/pipeline/tiny.yaml", f"pipeline.root={root}",
            "pipeline.stages=[prepare_data]", *LARGE_DATA]
    procs = [_start(args, _env(), tmp_path / f"run{i}.log") for i in range(2)]
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        ended = [i for i, p in enumerate(procs) if p.poll() is not None]
        assert ended, "neither run stopped"
        loser, holder = ended[0], 1 - ended[0]
        message = (tmp_path / f"run{loser}.log").read_text()
        assert procs[loser].returncode == 3, message[-3000:]
        assert procs[holder].poll() is None, "the holder stopped too"
        lines = [line for line in message.splitlines() if "in use by another workflow run" in line]
        assert len(lines) == 1, message
        assert f"pid {procs[holder].pid} since" in lines[0] and str(root / "workflow" / "run.lock") in lines[0]
        assert "Traceback" not in message and "OperationalError" not in message
        record = _wait_running(root / "workflow" / "state.json", "prepare_data", procs[holder])
        assert record["owner"]["pid"] == procs[holder].pid
    finally:
        for proc in procs:
            _kill_group(proc)


def test_killed_driver_reads_interrupted_and_a_rerun_kills_its_mlflow_runs(tmp_path):
    """A driver SIGKILLed mid-stage: status says "interrupted" (not running, without the earlier fingerprint's
    outputs); a rerun marks the dead run's parent and stage MLflow runs KILLED and completes the stage."""
    from pipelines.workflow.runner import Workflow

    root = tmp_path / "root"
    small = compose("conf/pipeline/tiny.yaml", [f"pipeline.root={root}", "pipeline.stages=[prepare_data]",
                                                *SMALL_DATA])
    assert [r.status for r in Workflow(small).run()] == ["completed"]
    large_args = [f"pipeline.root={root}", "pipeline.stages=[prepare_data]", *LARGE_DATA]
    proc = _start(["pipeline", "run", "--config", "conf/pipeline/tiny.yaml", *large_args], _env(),
                  tmp_path / "killed.log")
    try:
        record = _wait_running(root / "workflow" / "state.json", "prepare_data", proc)
    finally:
        _kill_group(proc)
    assert record["owner"]["pid"] == proc.pid
    large = compose("conf/pipeline/tiny.yaml", large_args)
    [row] = Workflow(large).status()
    assert row["status"] == "interrupted" and row["outputs"] == {}, row
    client = MlflowClient(Workflow(large).tracking_uri)
    dead_runs = [record["run_id"], record["parent_run_id"]]
    assert [client.get_run(r).info.status for r in dead_runs] == ["RUNNING", "RUNNING"]

    assert [r.status for r in Workflow(small).run()] == ["completed"]
    assert [client.get_run(r).info.status for r in dead_runs] == ["KILLED", "KILLED"]
    assert "deco.interrupted" in client.get_run(record["parent_run_id"]).data.tags
    assert [r["status"] for r in Workflow(small).status()] == ["done"]


@pytest.mark.parametrize("where", ["env", "config"])
def test_closed_tracking_port_fails_in_seconds_with_one_line(where, tmp_path):
    """MLFLOW_TRACKING_URI or tracking.tracking_uri on a closed port: exit code 3 and one line naming the endpoint
    and the setting, before Ray starts (the guard is the subprocess timeout, far below MLflow's own retries)."""
    uri = f"http://127.0.0.1:{free_port()}"
    args = ["pipeline", "run", "--config", "conf/pipeline/tiny.yaml", f"pipeline.root={tmp_path / 'root'}"]
    env = _env(MLFLOW_TRACKING_URI=uri) if where == "env" else _env()
    if where == "config":
        args.append(f"tracking.tracking_uri={uri}")
    done = subprocess.run(_deco(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output[-3000:]
    [line] = [line for line in output.splitlines() if "cannot reach" in line]
    assert f"MLflow tracking server at {uri} (connection refused)" in line
    assert ("MLFLOW_TRACKING_URI" if where == "env" else "tracking.tracking_uri") in line
    assert "Traceback" not in output and "started local Ray" not in output


def test_closed_s3_endpoint_fails_in_seconds_with_one_line(tmp_path):
    """An s3:// root whose endpoint is a closed port: exit code 3 and one line naming the endpoint and
    data.storage.endpoint_url, with no credential in the output."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    secret = f"relops-secret-{uuid.uuid4().hex}"
    env = _env(AWS_ACCESS_KEY_ID="AKIARELOPSPROBE", AWS_SECRET_ACCESS_KEY=secret)
    args = ["pipeline", "run", "--config", "conf/pipeline/tiny.yaml", "pipeline.root=s3://closed-bucket/run",
            f"data.storage.endpoint_url={endpoint}", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}"]
    done = subprocess.run(_deco(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output[-3000:]
    [line] = [line for line in output.splitlines() if "cannot reach" in line]
    assert f"S3 endpoint for bucket closed-bucket (pipeline.root) at {endpoint}" in line
    assert "data.storage.endpoint_url" in line
    assert secret not in output and "AKIARELOPSPROBE" not in output and "Traceback" not in output


def test_an_s3_root_lock_is_a_conditional_put(s3_server, s3_bucket):
    """On an S3 root the lock is created with If-None-Match (refused when present): a second taker sees the
    holder; after release the root is free again."""
    from pipelines.workflow.liveness import Owner, process_start_time
    from pipelines.workflow.lock import RootLock, RootLocked

    root = f"{s3_bucket}/run"
    first = RootLock(root, s3_server.storage)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        other = RootLock(root, s3_server.storage)
        other.owner = Owner.from_dict({**Owner.me().to_dict(), "pid": sleeper.pid,
                                       "proc_start": process_start_time(sleeper.pid)})
        assert other._create()
        assert not first._create()  # the store refused the put: the object exists
        with pytest.raises(RootLocked, match=rf"pid {sleeper.pid} since .*lock {root}/workflow/run.lock"):
            first.acquire()
        other.release()
        with first:
            assert first.holder()[0].pid == os.getpid()
        assert first.holder() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_s3_probe_passes_an_existing_bucket_and_names_a_missing_one(s3_server, s3_bucket):
    """Against a real endpoint: the unsigned probe finds the bucket; a missing bucket is named with its key."""
    from pipelines.workflow.probe import ServiceUnreachable, probe_services

    ok = compose("pipeline/tiny", [f"pipeline.root={s3_bucket}/run", f"data.storage.endpoint_url={s3_server.endpoint_url}"])
    probe_services(ok, None)
    missing = compose("pipeline/tiny", ["pipeline.root=s3://no-such-bucket-relops/run",
                                        f"data.storage.endpoint_url={s3_server.endpoint_url}"])
    with pytest.raises(ServiceUnreachable, match=r"bucket 'no-such-bucket-relops' does not exist there\): create the "
                                                 r"bucket or change pipeline.root$"):
        probe_services(missing, None)
