"""The foundation build end to end on the real engine (text shards -> Ray Train + DeepSpeed -> scored export) and
the pipeline loading its output through model.llm.path; the same for the vision tower (model.vision.path)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from mlflow import MlflowClient

from deco_core.config import compose
from deco_core.model.builds import FOUNDATION_MANIFEST
from deco_core.model.deco import DecoModel
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

    # a second phase goes on training that build (not a random LLM) and keeps its manifest as the parent
    phase2 = replace(fc, root=str(tmp_path / "root2"), name="llm2", init=str(llm_dir), format_mix={"mc": 1.0},
                     overrides=[o for o in fc.overrides if not o.startswith("model.")])
    second = build(phase2, steps=2)
    assert second["parent"] == manifest and second["steps"] == 2
    after = DecoModel.from_config(compose("pipeline/tiny", [f"model.llm.path={tmp_path / 'out' / 'llm2'}",
                                                            f"model.tokenizer.path={tmp_path / 'out' / 'llm2'}"]).model)
    moved = [(after.llm.state_dict()[k] - v).abs().max().item() for k, v in loaded.llm.state_dict().items()]
    assert 0 < max(moved) < 0.05  # trained a little, from the parent's weights


def test_vision_build_trains_the_tower_through_the_pipeline_and_the_pipeline_loads_it_frozen(ray_local, tmp_path):
    from pipelines.foundation_vision import VisionFoundationConfig
    from pipelines.foundation_vision import build as build_vision

    root = tmp_path / "root"
    vc = VisionFoundationConfig(root=str(root), out=str(tmp_path / "out"), overrides=[
        *VisionFoundationConfig().overrides, f"data.root={root / 'data'}", "data.caption_samples=64",
        "data.instruct_samples=8", "data.format_samples=8", "data.eval_samples=4", "data.samples_per_shard=32",
        "pretrain.log_every=1", "pretrain.checkpoint_every=2"])
    manifest = build_vision(vc, steps=3)
    tower_dir = tmp_path / "out" / "vision"
    assert json.loads((tower_dir / FOUNDATION_MANIFEST).read_text()) == manifest
    assert manifest["steps"] == 3 and manifest["projector"]["name"] == "mlp" and manifest["train"]["train_vision"]

    state = json.loads((root / "workflow" / "state.json").read_text())
    export = DecoModel.from_pretrained(state["stages"]["pretrain"]["outputs"]["model"])
    cfg = compose("pipeline/tiny", [f"model.vision.path={tower_dir}"])
    loaded = DecoModel.from_config(cfg.model)
    for k, v in export.vision.model.state_dict().items():
        assert torch.equal(loaded.vision.model.state_dict()[k], v), k

    run = MlflowClient(resolve_tracking_uri(cfg.tracking, str(root))).get_run(manifest["mlflow_run"])
    assert run.data.metrics  # the pretrain stage's losses


def test_dense_vision_build_trains_on_patch_labels_through_ray_train_and_the_pipeline_loads_it(ray_local, tmp_path):
    from pipelines.foundation_vision import VisionFoundationConfig
    from pipelines.foundation_vision import build as build_vision

    root = tmp_path / "root"
    vc = VisionFoundationConfig(objective="dense", root=str(root), out=str(tmp_path / "out"), overrides=[
        "model.vision.path=null", "pretrain.train_vision=true", "pretrain.log_every=1"])
    manifest = build_vision(vc, steps=3)
    tower_dir = tmp_path / "out" / "vision"
    assert json.loads((tower_dir / FOUNDATION_MANIFEST).read_text()) == manifest
    assert manifest["steps"] == 3 and manifest["build"]["objective"] == "dense"
    assert set(manifest["patch_accuracy"]) == {"shape", "colour", "size"}
    assert all(0.0 <= v <= 1.0 for v in manifest["patch_accuracy"].values())

    cfg = compose("pipeline/tiny", [f"model.vision.path={tower_dir}"])
    loaded = DecoModel.from_config(cfg.model)  # the size guard reads the manifest's vision section
    fresh = DecoModel.from_config(compose("pipeline/tiny", ["model.vision.path=null"]).model)
    assert any(not torch.equal(v, fresh.vision.model.state_dict()[k])
               for k, v in loaded.vision.model.state_dict().items())  # trained weights, not a random init

    run = MlflowClient(resolve_tracking_uri(cfg.tracking, str(root))).get_run(manifest["mlflow_run"])
    assert run.info.status == "FINISHED" and {"loss", "patch_acc/shape"} <= set(run.data.metrics)
    assert run.data.params["objective"] == "dense"
