"""Tests of scheduled retraining: the pure promotion rule, the round's config, promotion against a real MLflow
server with exported tiny models (no training), and one slow end-to-end round of ``retrain(cfg)``."""

from __future__ import annotations

import math
import re
import uuid
from pathlib import Path

import pytest

from deco_core.config import ConfigError, RetrainConfig, compose
from pipelines.ops.retrain import check_retrain_config, decide, promote_if_better, retrain, round_config
from tests.fixtures.mlflow_server import MlflowServer

# ------------------------------------------------------------------------------------------------ unit level


def test_decide_bootstraps_without_a_champion() -> None:
    """With no champion the challenger becomes champion whatever its score."""
    assert decide(0.0, None, 0.5) == "bootstrap"


def test_decide_promotes_only_at_or_above_the_margin() -> None:
    """Higher-is-better: a gain of exactly the margin promotes, a smaller gain or a loss rejects."""
    assert decide(0.71, 0.70, 0.01) == "promoted"
    assert decide(0.709, 0.70, 0.01) == "rejected"
    assert decide(0.60, 0.70, 0.0) == "rejected"
    assert decide(0.70, 0.70, 0.0) == "promoted"


def test_decide_respects_lower_is_better() -> None:
    """Lower-is-better (a loss): the challenger must be lower by the margin."""
    assert decide(0.40, 0.50, 0.05, higher_is_better=False) == "promoted"
    assert decide(0.48, 0.50, 0.05, higher_is_better=False) == "rejected"
    assert decide(0.60, 0.50, 0.0, higher_is_better=False) == "rejected"


def test_decide_rejects_non_finite_challenger_scores() -> None:
    """A NaN challenger score is an error; a NaN champion score is beaten by any finite challenger."""
    with pytest.raises(ValueError, match="not a finite number"):
        decide(math.nan, 0.5, 0.01)
    assert decide(0.1, math.nan, 0.01) == "promoted"


def test_retrain_config_is_validated() -> None:
    """Unknown init, negative margin and non-eval metric keys raise ConfigError naming the key."""
    check_retrain_config(RetrainConfig())
    for bad, key in ((RetrainConfig(init="warm"), "retrain.init"), (RetrainConfig(margin=-0.1), "retrain.margin"),
                     (RetrainConfig(metric="loss"), "retrain.metric")):
        with pytest.raises(ConfigError, match=key):
            check_retrain_config(bad)


def test_round_config_gets_fresh_data_its_own_root_and_the_shared_eval_set(tmp_path: Path) -> None:
    """The round's config moves the data seed by offset × round, sets root, tracking store, eval URIs, init."""
    cfg = compose("pipeline/retrain", [f"pipeline.root={tmp_path}", "retrain.data_seed_offset=7"])
    rcfg = round_config(cfg, 3, f"{tmp_path}/r3", "sqlite:///x.db", {"shapes-rec": "/frozen/rec"}, "/champ")
    assert rcfg.data.shapes.seed == cfg.data.shapes.seed + 21
    assert rcfg.pipeline.root == f"{tmp_path}/r3" and rcfg.tracking.tracking_uri == "sqlite:///x.db"
    assert rcfg.eval.data["shapes-rec"] == "/frozen/rec" and rcfg.finetune.init_from == "/champ"
    assert "register" not in rcfg.pipeline.stages and rcfg.retrain == cfg.retrain


# ----------------------------------------------------------------------------------------- with MLflow


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory, shapes_tokenizer) -> list[Path]:
    """Two exported, untrained tiny models (different init seeds) in save_pretrained format."""
    from deco_core.model.deco import DecoModel

    dirs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"export{seed}")
        DecoModel.from_config(compose("pipeline/tiny", [f"model.seed={seed}"]).model, shapes_tokenizer).save_pretrained(out)
        dirs.append(out)
    return dirs


def _register(uri: str, exp_id: str, model_dir: Path, name: str) -> str:
    from mlflow import MlflowClient

    from deco_core.tracking.registry import register_model

    run_id = MlflowClient(uri).create_run(exp_id, run_name="finetune").info.run_id
    return register_model(uri, run_id, str(model_dir), name, {"deco.test": "1"}, aliases=("challenger",))


@pytest.mark.integration
def test_retrain_promotes_a_better_challenger_and_refuses_a_worse_one(mlflow_server: MlflowServer,
                                                                      tiny_exports: list[Path]) -> None:
    """Champion moves on bootstrap and on a win by the margin, stays on a smaller gain; every decision is tagged."""
    from mlflow import MlflowClient

    uri, name, experiment = mlflow_server.uri, f"deco-rt-{uuid.uuid4().hex[:6]}", f"rt-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(experiment)
    rc = RetrainConfig(metric="eval/group/localization", margin=0.01)
    kw = {"experiment": experiment}

    v1 = _register(uri, exp_id, tiny_exports[0], name)
    assert promote_if_better(uri, name, v1, 0.50, None, rc, **kw) == "bootstrap"
    v2 = _register(uri, exp_id, tiny_exports[1], name)
    assert client.get_registered_model(name).aliases == {"champion": v1, "challenger": v2}
    assert promote_if_better(uri, name, v2, 0.60, 0.50, rc, **kw) == "promoted"
    assert client.get_registered_model(name).aliases == {"champion": v2, "challenger": v2}
    v3 = _register(uri, exp_id, tiny_exports[0], name)
    assert promote_if_better(uri, name, v3, 0.605, 0.60, rc, **kw) == "rejected"
    assert client.get_registered_model(name).aliases == {"champion": v2, "challenger": v3}

    tags = client.get_model_version(name, v3).tags
    assert tags["deco.decision"] == "rejected" and tags["deco.metric"] == "eval/group/localization"
    assert (tags["deco.challenger_score"], tags["deco.champion_score"], tags["deco.margin"]) == ("0.605", "0.6", "0.01")
    assert tags["deco.champion_version"] == v2
    assert client.get_model_version(name, v2).tags["deco.decision"] == "promoted"
    assert client.get_model_version(name, v1).tags["deco.champion_score"] == "none"

    runs = client.search_runs([exp_id], filter_string="tags.`deco.kind` = 'retrain-decision'",
                              order_by=["attributes.start_time ASC"])
    assert [r.data.tags["deco.decision"] for r in runs] == ["bootstrap", "promoted", "rejected"]
    last = runs[-1].data
    assert last.metrics["challenger_score"] == pytest.approx(0.605) and last.metrics["champion_score"] == 0.6
    assert last.params["retrain.margin"] == "0.01" and last.tags["deco.champion_after"] == v2
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.integration
@pytest.mark.slow
def test_retrain_round_end_to_end(mlflow_server: MlflowServer, tiny_exports: list[Path], ray_local,
                                  tmp_path: Path) -> None:
    """A whole round: champion downloaded, challenger finetuned from it on fresh data, both scored, decision made."""
    from mlflow import MlflowClient

    name, experiment = f"deco-e2e-{uuid.uuid4().hex[:6]}", f"retrain-e2e-{uuid.uuid4().hex[:6]}"
    cfg = compose("pipeline/retrain", [
        f"pipeline.root={tmp_path}", f"tracking.tracking_uri={mlflow_server.uri}", f"tracking.experiment={experiment}",
        f"tracking.registered_model={name}", "tracking.system_metrics=false", "data.caption_samples=200",
        "data.instruct_samples=200", "data.format_samples=64", "data.eval_samples=24", "data.samples_per_shard=100", "finetune.max_steps=5",
        "finetune.checkpoint_every=5", "finetune.log_every=1", "finetune.max_failures=0", "eval.batch_size=24",
        "eval.worst_cases=2"])
    client = MlflowClient(mlflow_server.uri)
    v1 = _register(mlflow_server.uri, client.create_experiment(experiment), tiny_exports[0], name)  # champion

    result = retrain(cfg)

    assert result.init == "champion" and result.champion_version == v1 and result.challenger_version != v1
    assert result.decision in ("promoted", "rejected") and result.champion_score is not None
    assert result.data_seed == cfg.data.shapes.seed + 2  # round 2: one version existed before
    aliases = client.get_registered_model(name).aliases
    assert aliases["challenger"] == result.challenger_version
    assert aliases["champion"] == (result.challenger_version if result.decision == "promoted" else v1)
    tags = client.get_model_version(name, result.challenger_version).tags
    assert tags["deco.decision"] == result.decision and tags["deco.champion_version"] == v1
    decision_run = client.get_run(result.decision_run_id)
    assert decision_run.data.tags["deco.decision"] == result.decision
    assert decision_run.data.params["retrain.init"] == "champion"
    assert list(Path(result.root).glob("prepare_data/*/shards/**/*.tar"))
    assert list(Path(result.root).glob("champion/model/*.safetensors"))


def test_cli_retrain_is_registered_and_reports_config_errors(tmp_path: Path) -> None:
    """`deco retrain` exists and an invalid retrain setting exits with code 2 naming the key, creating nothing."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["retrain", "--config", "conf/pipeline/retrain.yaml", "retrain.init=warm",
                                      f"pipeline.root={tmp_path / 'r'}"])
    assert result.exit_code == 2, result.output
    assert "retrain.init" in result.output and not (tmp_path / "r").exists()


def test_retrain_status_reads_the_decision_history_from_a_sqlite_store(tmp_path: Path) -> None:
    """`deco retrain status`: one line and exit 0 while no round ever decided (nothing is created), then the
    recorded decisions newest first with versions, promotion and margin."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from deco_core.logs import setup_logging
    from deco_core.tracking import ensure_experiment
    from pipelines.cli import app

    root = tmp_path / "retrain"
    args = ["retrain", "status", "--config", "pipeline/retrain", f"pipeline.root={root}"]
    never = CliRunner().invoke(app, args)
    assert never.exit_code == 0, never.output
    assert len(never.output.strip().splitlines()) == 1 and "has never fired" in never.output
    assert "deco-tiny" in never.output and not root.exists()
    setup_logging()  # the command bound the loggers to the runner's stream, closed by now

    uri = f"sqlite:///{root / 'mlruns.db'}"
    root.mkdir()
    client = MlflowClient(uri, registry_uri=uri)
    ensure_experiment(client, "deco-retrain", root)
    client.create_registered_model("deco-tiny")
    versions = [client.create_model_version("deco-tiny", str(tmp_path)).version for _ in range(2)]
    rc = RetrainConfig(metric="eval/group/localization", margin=0.05)
    assert promote_if_better(uri, "deco-tiny", versions[0], 0.5, None, rc, experiment="deco-retrain",
                             root=str(root)) == "bootstrap"
    assert promote_if_better(uri, "deco-tiny", versions[1], 0.52, 0.5, rc, experiment="deco-retrain",
                             root=str(root)) == "rejected"

    shown = CliRunner().invoke(app, [*args, "--last", "5"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.strip().splitlines()
    assert len(lines) == 3 and "newest first" in lines[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  ", lines[1]), lines[1]
    assert lines[1].endswith(f"rejected   challenger v{versions[1]} eval/group/localization=0.52 vs champion "
                             f"v{versions[0]}=0.5, margin 0.05: not promoted; champion now v{versions[0]}")
    assert "bootstrap" in lines[2] and "champion none=none" in lines[2] and lines[2].endswith(
        f": promoted; champion now v{versions[0]}")
