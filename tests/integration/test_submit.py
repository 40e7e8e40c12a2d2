"""Integration tests of cluster submission: pipeline stages as Ray Jobs on a real local Ray head.

The head is started here with `ray start --head --block` in its own session, its own temp dir and free
ports. It is stopped by signalling that session's process group, then any process whose command line names
our temp dir (raylet, GCS, dashboard, workers all carry it), never with `ray stop`, which would end every
Ray instance on the machine, the suite's in-process `ray_local` included. This module never calls ray.init:
JobSubmissionClient talks HTTP only, so the head and an in-process Ray can coexist.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.ops.submit import (
    SubmitError,
    config_argument,
    job_runtime_env,
    stage_entrypoint,
    submit_pipeline,
)
from tests.fixtures.mlflow_server import MlflowServer, free_port

pytestmark = pytest.mark.integration
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90.0


@dataclass
class RayHead:
    address: str  # dashboard / Jobs API URL
    temp_dir: Path
    process: subprocess.Popen[bytes]


def _processes_naming(marker: str) -> list[int]:
    """Pids whose command line contains ``marker`` (our head's unique temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _stop_head(head: RayHead) -> None:
    """SIGTERM the `ray start --block` leader (it stops its children), then kill what is left of ours."""
    if head.process.poll() is None:
        head.process.terminate()  # the leader only: its handler stops raylet, GCS and dashboard in order
        try:
            head.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(head.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.process.wait(timeout=10)
    if Path("/proc").is_dir():
        for pid in _processes_naming(str(head.temp_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A real local Ray head (4 logical CPUs, loopback only, auth disabled as in infra/local) for this module."""
    temp_dir = Path(tempfile.mkdtemp(prefix="dsub-"))  # short: Ray's unix socket paths must stay short
    ports = set()
    while len(ports) < 4:
        ports.add(free_port())
    gcs, dashboard, client, agent = sorted(ports)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
           "--include-dashboard", "true", "--num-cpus", "4", "--object-store-memory", str(128 * 1024**2),
           "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    log_path = temp_dir / "head.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    head = RayHead(f"http://127.0.0.1:{dashboard}", temp_dir, proc)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(f"{head.address}/api/version"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not come up; log tail:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield head
    finally:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_prepare_data_runs_as_a_ray_job(ray_head: RayHead, mlflow_server: MlflowServer, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """prepare_data submitted as a Ray Job succeeds, writes its shards under pipeline.root and logs its stage run
    nested under the submitter's one parent run; the Ray job id is a tag on both."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "deco-secret-value-xyz")  # a secret: never sent to the job, never logged
    root = tmp_path / "root"
    overrides = [f"pipeline.root={root}", "data.caption_samples=64", "data.instruct_samples=64", "data.format_samples=64",
                 "data.eval_samples=64", f"tracking.tracking_uri={mlflow_server.uri}",
                 "tracking.experiment=submit-test"]
    caplog.set_level("INFO", logger="pipelines.ops.submit")
    jobs = submit_pipeline(ray_head.address, "conf/pipeline/tiny.yaml", overrides, ["prepare_data"], wait=True,
                           timeout_s=240)

    assert [(j.stage, j.status) for j in jobs] == [("prepare_data", "SUCCEEDED")], jobs[0].message
    assert jobs[0].job_id.startswith("deco-prepare_data-")
    shards = list(root.glob("prepare_data/*/shards/**/*.tar"))
    assert shards and list(root.glob("prepare_data/*/shards/**/manifest.parquet"))
    assert "[prepare_data]" in caplog.text  # the job's log was streamed
    assert "deco-secret-value-xyz" not in caplog.text and "MLFLOW_TRACKING_TOKEN" not in caplog.text
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("submit-test")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`deco.stage` = 'prepare_data'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`deco.kind` = 'workflow'")
    assert [p.info.run_id for p in parents] == [jobs[0].parent_run_id]  # the job made no workflow run of its own
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["deco.submitted_to"] == ray_head.address
    assert parent.data.tags["deco.ray_job.prepare_data"] == jobs[0].job_id
    assert parent.data.tags["stage.prepare_data.status"] == "completed"
    assert runs[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert runs[0].data.tags["deco.ray_job_id"] == jobs[0].job_id


def test_failed_stage_stops_the_chain(ray_head: RayHead, tmp_path: Path) -> None:
    """A stage whose upstream is missing fails as a job, the stages after it are not submitted, and the
    submitted workflow's parent run ends FAILED."""
    from mlflow import MlflowClient

    overrides = [f"pipeline.root={tmp_path}", f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db"]
    jobs = submit_pipeline(ray_head.address, "pipeline/tiny", overrides, ["finetune", "evaluate"], timeout_s=180)
    assert [(j.stage, j.status) for j in jobs] == [("finetune", "FAILED"), ("evaluate", "NOT_SUBMITTED")]
    assert jobs[1].job_id == "-"
    parent = MlflowClient(f"sqlite:///{tmp_path}/m.db").get_run(jobs[0].parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["deco.ray_job.finetune"] == jobs[0].job_id


def test_relative_root_is_refused_before_anything_is_submitted() -> None:
    """A relative pipeline.root is refused naming the key, the value and what to use, before the address is
    even contacted (this one has no dashboard)."""
    with pytest.raises(SubmitError) as err:
        submit_pipeline(f"127.0.0.1:{free_port()}", "pipeline/tiny", ["pipeline.root=runs/rel"], ["prepare_data"])
    assert str(err.value).startswith("config key 'pipeline.root' = 'runs/rel' is a relative path")
    assert "absolute path" in str(err.value) and "s3://" in str(err.value) and "\n" not in str(err.value)


def test_unreachable_address_is_named(tmp_path: Path) -> None:
    """An address where no dashboard listens raises SubmitError naming that address."""
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(SubmitError, match=f"cannot reach the Ray Jobs API at http://{address}"):
        submit_pipeline(address, "pipeline/tiny", [f"pipeline.root={tmp_path}"], ["prepare_data"])


def test_entrypoint_env_and_config_are_shaped_for_the_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Entry points are shell-quoted, configs become repo-relative, only AWS_/MLFLOW_/DS_ vars pass through."""
    cmd = stage_entrypoint("pretrain", "conf/pipeline/tiny.yaml", ["pipeline.name=a b", "x=$HOME"])
    assert cmd == "python -m pipelines.workflow.job pretrain --config conf/pipeline/tiny.yaml 'pipeline.name=a b' 'x=$HOME'"
    repo = Path(__file__).resolve().parents[2]
    assert config_argument(str(repo / "conf/pipeline/tiny.yaml")) == "conf/pipeline/tiny.yaml"
    assert config_argument("pipeline/tiny") == "pipeline/tiny"
    outside = tmp_path / "mine.yaml"
    outside.write_text("pipeline: {}\n")
    with pytest.raises(SubmitError, match="outside"):
        config_argument(str(outside))
    with pytest.raises(SubmitError, match="no such file"):
        config_argument("pipeline/nope")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HOME_SECRET_UNRELATED", "x")
    env = job_runtime_env({"env_vars": {"OMP_NUM_THREADS": 1}})
    assert env["working_dir"] == str(repo) and ".venv" in env["excludes"] and "tests" in env["excludes"]
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and env["env_vars"]["OMP_NUM_THREADS"] == "1"
    assert "HOME_SECRET_UNRELATED" not in env["env_vars"]
    with pytest.raises(SubmitError, match="expected a non-empty list"):
        submit_pipeline("127.0.0.1:1", "pipeline/tiny", [], ["train"])


def test_auth_refusal_explains_tokens_and_auth_mode(tmp_path: Path) -> None:
    """A dashboard answering 401 gives a SubmitError that names the address and the token / auth-mode settings."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b"Unauthorized: Missing authentication token")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(SubmitError) as err:
            submit_pipeline(address, "pipeline/tiny", [f"pipeline.root={tmp_path}"], ["prepare_data"])
        assert address in str(err.value)
        assert "RAY_AUTH_TOKEN" in str(err.value) and "RAY_AUTH_MODE=disabled" in str(err.value)
    finally:
        server.shutdown()
        server.server_close()
