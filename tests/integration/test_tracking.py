"""What a user browsing MLflow sees, against a real `mlflow server`: experiments marked as model training (the UI
does not open them in GenAI mode), source/git tags on runs, the key settings and headline scores on the
workflow's parent run, and the shard sets as run inputs with a digest taken from their manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from deco_core.data.shards import read_manifest, write_shards
from deco_core.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    get_or_create_run,
    log_headline_metrics,
    log_key_settings,
    log_shard_datasets,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _shards(uri: Path, n: int, seed: int):
    samples = [{"__key__": f"s{seed}-{i:04d}", "json": {"id": str(i), "conversations": [], "task": "caption"}}
               for i in range(n)]
    write_shards(samples, str(uri), source="shapes", split="train", samples_per_shard=5, progress=False)
    return read_manifest(str(uri))


def test_experiment_is_model_training_and_runs_carry_source_tags(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    run_id = get_or_create_run(mlflow_server.uri, "deco-tracking-kind", "wf-1", tmp_path)
    exp = client.get_experiment_by_name("deco-tracking-kind")
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    if (ROOT / ".git").exists():  # a source checkout: the commit the code came from
        assert len(tags["mlflow.source.git.commit"]) == 40

    other = client.create_experiment("deco-tracking-user-kind", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    get_or_create_run(mlflow_server.uri, "deco-tracking-user-kind", "wf-1", tmp_path)
    assert client.get_experiment(other).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # a user's choice stays


def test_parent_run_holds_key_settings_and_headline_scores(mlflow_server, tmp_path, tiny_cfg):
    client = MlflowClient(mlflow_server.uri)
    parent = get_or_create_run(mlflow_server.uri, "deco-tracking-parent", "wf-1", tmp_path)
    log_key_settings(client, parent, tiny_cfg)
    log_headline_metrics(client, parent, "finetune", {"model": "/m", "final_loss": 0.5, "steps": 30})
    log_headline_metrics(client, parent, "evaluate", {"eval/group/grounding": 0.25, "report": "/r.md"})
    log_headline_metrics(client, parent, "analyze", {"mass_lift": 2.5, "pointing_hit_rate": 0.4, "out_dir": "/a"})
    data = client.get_run(parent).data
    assert data.params["model.projector.name"] == tiny_cfg.model.projector.name
    assert data.params["finetune.lr"] == str(tiny_cfg.finetune.lr)
    assert data.params["pipeline.name"] == "tiny"
    assert data.metrics == {"finetune/final_loss": 0.5, "eval/group/grounding": 0.25,
                            "analysis/mass_lift": 2.5, "analysis/pointing_hit_rate": 0.4}


def test_shard_sets_are_logged_as_inputs_with_a_manifest_digest(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    run_id = get_or_create_run(mlflow_server.uri, "deco-tracking-inputs", "prepare", tmp_path)
    train, same, val = (_shards(tmp_path / "a", 12, 0), _shards(tmp_path / "b", 12, 0),
                        _shards(tmp_path / "val", 5, 1))
    log_shard_datasets(client, run_id, {"pretrain": train}, "training")
    log_shard_datasets(client, run_id, {"val_pretrain": val}, "validation")
    inputs = {d.dataset.name: d for d in client.get_run(run_id).inputs.dataset_inputs}
    assert set(inputs) == {"pretrain", "val_pretrain"}
    pretrain = inputs["pretrain"]
    assert str(tmp_path / "a") in pretrain.dataset.source and pretrain.dataset.source_type == "local"
    assert '"num_samples": 12' in pretrain.dataset.profile and '"num_shards": 3' in pretrain.dataset.profile
    assert {t.key: t.value for t in inputs["val_pretrain"].tags}["mlflow.data.context"] == "validation"
    other = get_or_create_run(mlflow_server.uri, "deco-tracking-inputs", "prepare-b", tmp_path)
    log_shard_datasets(client, other, {"pretrain": same}, "training")
    (again,) = client.get_run(other).inputs.dataset_inputs
    assert again.dataset.digest == pretrain.dataset.digest  # same samples, same digest
    assert inputs["val_pretrain"].dataset.digest != pretrain.dataset.digest


def test_workflow_parent_run_gets_settings_and_the_prepared_shard_sets(tmp_path):
    """A real (one-stage) workflow run: its parent run holds the key settings and the shard sets as inputs."""
    from deco_core.config import compose
    from pipelines.workflow.runner import Workflow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = compose("pipeline/tiny", [f"pipeline.root={tmp_path / 'wf'}", f"tracking.tracking_uri={uri}",
                                    "pipeline.stages=[prepare_data]", "data.caption_samples=20",
                                    "data.instruct_samples=20", "data.format_samples=8", "data.eval_samples=8",
                                    "data.samples_per_shard=10"])
    (report,) = Workflow(cfg).run()
    assert report.status == "completed"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    (parent,) = client.search_runs([exp.experiment_id], "tags.`deco.kind` = 'workflow'")
    assert parent.data.params["model.projector.name"] == cfg.model.projector.name
    for run in (parent, client.get_run(report.run_id)):
        names = {d.dataset.name for d in run.inputs.dataset_inputs}
        assert {"pretrain", "finetune", "val_pretrain", "val_finetune"} <= names, run.info.run_name


def test_a_version_is_registered_on_the_tracking_server_whatever_registry_the_process_set(
        mlflow_server, tmp_path, tiny_cfg, shapes_tokenizer, monkeypatch):
    """A process-wide registry setting (here another store, as ``mlflow.set_registry_uri`` leaves behind) must not
    divert the version away from the server that holds the run and serves ``models:/`` URIs."""
    from deco_core.model.deco import DecoModel
    from deco_core.tracking.registry import register_model

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    DecoModel.from_config(tiny_cfg.model, shapes_tokenizer).save_pretrained(tmp_path / "export")
    client = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    run_id = client.create_run(client.create_experiment("deco-registry-target")).info.run_id
    version = register_model(mlflow_server.uri, run_id, str(tmp_path / "export"), "deco-registry-target", {})
    assert client.get_model_version_by_alias("deco-registry-target", "challenger").version == version
