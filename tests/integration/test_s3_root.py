"""An s3:// ``pipeline.root`` keeps every output remote, against a real local S3 endpoint (moto's server mode) and
a real MLflow server: a remote root without a tracking server fails at start naming the setting to add; analyze
writes its figures under the remote root; register logs a remote export (downloaded first) as a version that
downloads and loads. Nothing may appear in a local folder named after the URI (``./s3:/...``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from deco_core.config import ConfigError, compose
from deco_core.data.storage import get_filesystem, upload_dir
from deco_core.model.deco import DecoModel
from deco_core.serving import input_example

pytestmark = pytest.mark.integration


@pytest.fixture
def remote_root(s3_server, s3_bucket, tmp_path, monkeypatch) -> str:
    """An s3:// run root on the local endpoint; the test runs in an empty working directory."""
    monkeypatch.chdir(tmp_path)
    return f"{s3_bucket}/run"


@pytest.fixture
def remote_export(s3_server, remote_root, tiny_cfg, shapes_tokenizer, tmp_path) -> tuple[str, DecoModel]:
    model = DecoModel.from_config(tiny_cfg.model, shapes_tokenizer).eval()
    local = tmp_path / "export-local"
    model.save_pretrained(local)
    return upload_dir(local, f"{remote_root}/finetune/abc/model", s3_server.storage), model


def _cfg(root: str, s3_server, *extra: str):
    return compose("pipeline/tiny", [f"pipeline.root={root}", f"data.storage.endpoint_url={s3_server.endpoint_url}",
                                     *extra])


@contextlib.contextmanager
def mlflow_at(tracking_uri: str) -> Iterator[None]:
    """MLflow's fluent API against ``tracking_uri`` (as registry too), leaving MLflow's globals and the
    ``MLFLOW_*_URI`` variables it exports exactly as found (unset stays unset)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_globals = tracking_utils._tracking_uri, registry_utils._registry_uri
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved_globals
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _no_local_uri_folder(cwd: Path) -> None:
    assert not any(p.name.startswith("s3:") for p in cwd.iterdir()), sorted(os.listdir(cwd))


def test_remote_root_without_a_tracking_server_fails_at_start(remote_root, s3_server, tmp_path, monkeypatch):
    from pipelines.workflow.runner import Workflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"pipeline.root.*set tracking.tracking_uri \(or MLFLOW_TRACKING_URI\)"):
        Workflow(_cfg(remote_root, s3_server))
    _no_local_uri_folder(tmp_path)


def test_analyze_writes_its_figures_under_the_remote_root(remote_root, remote_export, s3_server, mlflow_server,
                                                         tmp_path):
    from pipelines.stages import analyze
    from pipelines.workflow.context import StageContext

    cfg = _cfg(remote_root, s3_server, f"tracking.tracking_uri={mlflow_server.uri}", "analysis.num_samples=2")
    client = MlflowClient(mlflow_server.uri)
    run_id = client.create_run(client.create_experiment("deco-s3-analyze")).info.run_id
    ctx = StageContext(cfg, "analyze", "f" * 40, {"finetune": {"model": remote_export[0]}}, "analyze", run_id,
                       None, mlflow_server.uri)
    out = analyze.run(ctx)
    assert out["out_dir"] == f"{remote_root}/analyze/ffffffffff"
    fs, path = get_filesystem(out["out_dir"], cfg.data.storage)
    written = {Path(p).name for p in fs.find(path)}
    assert {"locality.png", "locality.json"} <= written, written
    logged = {a.path for a in client.list_artifacts(run_id, "analysis")}
    assert "analysis/locality.png" in logged
    _no_local_uri_folder(tmp_path)


def test_register_logs_a_remote_export_that_downloads_and_loads(remote_export, s3_server, mlflow_server, tmp_path):
    from deco_core.tracking.registry import register_model

    uri, model = remote_export
    client = MlflowClient(mlflow_server.uri)
    run_id = client.create_run(client.create_experiment("deco-s3-register")).info.run_id
    version = register_model(mlflow_server.uri, run_id, uri, "deco-s3-register", {"deco.test": "1"},
                             storage=s3_server.storage)
    with mlflow_at(mlflow_server.uri):
        local = mlflow.artifacts.download_artifacts("models:/deco-s3-register@challenger",
                                                    dst_path=str(tmp_path / "dl"))
        pyfunc = mlflow.pyfunc.load_model(f"models:/deco-s3-register/{version}")
    loaded = DecoModel.from_pretrained(local)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    answers = pyfunc.predict(input_example(model.cfg.vision.image_size), params={"max_new_tokens": 3})
    assert list(answers.columns) == ["answer"] and len(answers) == 1
