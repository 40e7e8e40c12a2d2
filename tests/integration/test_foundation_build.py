"""The foundation build end to end on the real engine (text shards -> Ray Train + DeepSpeed -> scored export) and
the pipeline loading its output through model.llm.path."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from deco_core.config import compose
from deco_core.model.deco import DecoModel
from deco_core.model.llm import FOUNDATION_MANIFEST
from deco_core.tracking import resolve_tracking_uri
from pipelines.foundation import EXPERIMENT, FoundationConfig, build, build_config

pytestmark = pytest.mark.integration


def test_build_trains_the_llm_alone_scores_it_and_the_pipeline_loads_it(ray_local, tmp_path):
    fc = FoundationConfig(root=str(tmp_path / "root"), out=str(tmp_path / "out"), format_samples=96,
                          instruct_samples=32, val_samples=32, eval_samples=6,
                          overrides=["finetune=foundation_tiny", "model.llm.path=null", "model.tokenizer.path=null",
                                     "finetune.log_every=1", "finetune.checkpoint_every=2"])
    manifest = build(fc, steps=4)
    llm_dir = tmp_path / "out" / "llm"
    assert json.loads((llm_dir / FOUNDATION_MANIFEST).read_text()) == manifest
    assert manifest["steps"] == 4 and manifest["train"]["train_llm"] and not manifest["train"]["train_projector"]
    assert set(manifest["scene_text_scores"]) == {"shapes-vqa", "shapes-pope", "shapes-mc", "shapes-rec"}
    assert all(m["n"] == 6 for m in manifest["scene_text_scores"].values())

    export = DecoModel.from_pretrained(tmp_path / "root" / "export")  # the engine's export of the stage
    cfg = compose("pipeline/tiny", [f"model.llm.path={llm_dir}", f"model.tokenizer.path={llm_dir}"])
    loaded = DecoModel.from_config(cfg.model)
    assert len(loaded.tokenizer) == len(export.tokenizer)
    for k, v in export.llm.state_dict().items():
        assert torch.equal(loaded.llm.state_dict()[k], v), k

    client = MlflowClient(resolve_tracking_uri(build_config(fc).tracking, fc.root))
    run = client.get_run(manifest["mlflow_run"])
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert "scene_text/shapes-pope/accuracy" in run.data.metrics
    assert any(a.path == FOUNDATION_MANIFEST for a in client.list_artifacts(run.info.run_id))
