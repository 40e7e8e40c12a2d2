"""The registered model served for real: register a tiny export, start
``mlflow models serve -m models:/NAME@challenger --env-manager local`` on 127.0.0.1 against a real tracking server,
and POST a table of (base64 PNG, prompt) rows to /invocations; the answers equal the in-process pyfunc's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from deco_core.model.deco import DecoModel
from deco_core.serving import answer_table, example_image_base64
from tests.fixtures.mlflow_server import HOST, free_port, mlflow_command

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NAME = "deco-serve-test"
READY_TIMEOUT_S = 240


def _wait_ready(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mlflow models serve exited:\n{log_path.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise AssertionError(f"mlflow models serve not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_registered_challenger_serves_answers_over_http(mlflow_server, tiny_cfg, shapes_tokenizer, tmp_path):
    from deco_core.tracking.registry import register_model

    model = DecoModel.from_config(tiny_cfg.model, shapes_tokenizer).eval()
    model.save_pretrained(tmp_path / "export")
    client = MlflowClient(mlflow_server.uri)
    run_id = client.create_run(client.create_experiment("deco-serving")).info.run_id
    register_model(mlflow_server.uri, run_id, str(tmp_path / "export"), NAME, {}, aliases=("challenger",))

    port = free_port()
    url = f"http://{HOST}:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_REGISTRY_URI": mlflow_server.uri,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           # as with an activated venv: the scoring server is started as `uvicorn` from PATH
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([*mlflow_command(), "models", "serve", "-m", f"models:/{NAME}@challenger",
                                 "--env-manager", "local", "-h", HOST, "-p", str(port), "-w", "1"],
                                cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_ready(url, proc, log_path)
        size = tiny_cfg.model.vision.image_size
        rows = [[example_image_base64(size), "What colour is the square?"],
                [example_image_base64(size), "<image>\nHow many shapes are there?"]]
        status, body = _post(url, {"dataframe_split": {"columns": ["image", "prompt"], "data": rows},
                                   "params": {"max_new_tokens": 4}})
        assert status == 200, body
        answers = [p["answer"] for p in body["predictions"]]
        import pandas as pd

        expected = answer_table(model, pd.DataFrame(rows, columns=["image", "prompt"]), max_new_tokens=4)
        assert answers == expected["answer"].tolist()
        bad_status, bad_body = _post(url, {"dataframe_split": {"columns": ["image", "prompt"],
                                                               "data": [["not base64!", "hi"]]}})
        assert bad_status >= 400 and "column 'image' is not valid base64" in json.dumps(bad_body)
        (log_path.parent / "response.json").write_text(json.dumps(body))  # kept for the README example
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """End the server's process group (the CLI and its uvicorn worker)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
