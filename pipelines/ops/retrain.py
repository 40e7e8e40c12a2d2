"""Scheduled retraining: fresh data, a challenger finetuned from the champion (or trained from scratch), both
scored on the same frozen eval set, and promotion by registry alias when the challenger wins by a margin.

``decide`` is the pure rule; ``promote_if_better`` applies it to the registry (aliases, version tags, a
"retrain-decision" MLflow run); ``retrain`` runs a whole round (``deco retrain``: pipelines.ops.retrain_cli).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from deco_core.config import Config, ConfigError, RetrainConfig, TrackingConfig, from_dict, to_dict
from deco_core.data.storage import copy_dir, is_remote, join_uri
from deco_core.tracking import PARENT_TAG, ensure_experiment, log_batch, resolve_tracking_uri

log = logging.getLogger(__name__)
INITS = ("champion", "scratch")
TOLERANCE = 1e-9  # a gain equal to the margin (up to float error) counts as reaching it


@dataclass
class RetrainDecision:
    """The outcome of one retraining round (also recorded in MLflow)."""

    decision: str  # bootstrap | promoted | rejected
    metric: str
    challenger_version: str
    challenger_score: float
    champion_version: str | None  # the champion it was compared with (None: there was none)
    champion_score: float | None
    champion_after: str  # the version holding alias champion after the round
    margin: float
    higher_is_better: bool
    init: str
    data_seed: int
    root: str
    decision_run_id: str


def decide(challenger: float, champion: float | None, margin: float, higher_is_better: bool = True) -> str:
    """'bootstrap' without a champion; 'promoted' iff the challenger beats the champion by >= margin; else
    'rejected'. A non-finite challenger score is an error; a non-finite champion score counts as beaten."""
    if not math.isfinite(challenger):
        raise ValueError(f"challenger score {challenger!r} is not a finite number")
    if champion is None:
        return "bootstrap"
    if not math.isfinite(champion):
        return "promoted"
    gain = challenger - champion if higher_is_better else champion - challenger
    return "promoted" if gain >= margin - TOLERANCE else "rejected"


def check_retrain_config(rc: RetrainConfig) -> None:
    if rc.init not in INITS:
        raise ConfigError(f"config key 'retrain.init' = {rc.init!r}: expected one of {', '.join(INITS)}")
    if not (math.isfinite(rc.margin) and rc.margin >= 0):
        raise ConfigError(f"config key 'retrain.margin' = {rc.margin!r}: expected a finite number >= 0")
    if not rc.metric.startswith("eval/"):
        raise ConfigError(f"config key 'retrain.metric' = {rc.metric!r}: expected a flat eval metric key such as "
                          "eval/group/localization or eval/shapes-pope/f1")


def promote_if_better(tracking_uri: str, name: str, challenger_version: str, challenger_score: float,
                      champion_score: float | None, rc: RetrainConfig, *, experiment: str = "deco-retrain",
                      run_id: str | None = None, params: dict[str, Any] | None = None,
                      root: str = "runs/retrain") -> str:
    """Decide, tag the challenger version, move ``champion`` on promotion/bootstrap, and record the decision on
    the MLflow run ``run_id`` (else a new run "retrain-decision" in ``experiment``); returns the decision."""
    from deco_core.tracking import registry_client

    decision = decide(challenger_score, champion_score, rc.margin, rc.higher_is_better)
    client = registry_client(tracking_uri)
    version = str(challenger_version)
    previous = client.get_registered_model(name).aliases.get("champion")
    tags = {"deco.decision": decision, "deco.metric": rc.metric, "deco.challenger_score": f"{challenger_score:.6g}",
            "deco.champion_score": "none" if champion_score is None else f"{champion_score:.6g}",
            "deco.margin": f"{rc.margin:g}", "deco.higher_is_better": str(rc.higher_is_better).lower(),
            "deco.champion_version": "none" if champion_score is None else str(previous)}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, "challenger", version)
    if decision in ("promoted", "bootstrap"):
        client.set_registered_model_alias(name, "champion", version)
    after = client.get_registered_model(name).aliases.get("champion")
    if run_id is None:
        exp_id = ensure_experiment(client, experiment, root)
        run_id = client.create_run(exp_id, run_name="retrain-decision").info.run_id
    _record_run(client, run_id, {**tags, "deco.kind": "retrain-decision", "deco.registered_model": name,
                                 "deco.challenger_version": version, "deco.champion_after": str(after)},
                {**asdict(rc), **(params or {})},
                {"challenger_score": challenger_score, "champion_score": champion_score, "margin": rc.margin})
    log.info("retrain decision %s: %s v%s %s=%.4f vs champion %s (margin %g); champion is now v%s", decision,
             name, version, rc.metric, challenger_score, tags["deco.champion_score"], rc.margin, after)
    return decision


def _record_run(client, run_id: str, tags: dict[str, str], params: dict[str, Any],
                metrics: dict[str, float | None]) -> None:
    existing = client.get_run(run_id).data.params  # a resumed decision run keeps its params
    log_batch(client, run_id, metrics=metrics, tags=tags,
              params={f"retrain.{k}": v for k, v in params.items() if f"retrain.{k}" not in existing})
    client.set_terminated(run_id, "FINISHED")


# ----------------------------------------------------------------------------------------------- one round
def _fetch_champion(client, tracking_uri: str, name: str, dst: str) -> tuple[str, str] | None:
    """(version, local folder of its export under ``dst``) of the current champion, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        if "champion" not in client.get_registered_model(name).aliases:
            return None
    except MlflowException:
        return None
    mv = client.get_model_version_by_alias(name, "champion")
    Path(dst).mkdir(parents=True, exist_ok=True)
    if mv.run_id:  # registered by our register step: the export sits under the run's artifacts "model/"
        local = client.download_artifacts(mv.run_id, "model", dst)
    else:
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=dst, tracking_uri=tracking_uri)
    from deco_core.model.deco import CONFIG_FILE

    export = Path(local) / "artifacts" / "export"  # a pyfunc version (our register step) holds the export here
    if (export / CONFIG_FILE).is_file():
        local = str(export)
    log.info("champion: %s v%s downloaded to %s", name, mv.version, local)
    return str(mv.version), local


def round_config(cfg: Config, round_no: int, root: str, tracking_uri: str, eval_uris: dict[str, str],
                 init_from: str | None) -> Config:
    """The round's config: fresh data seed, its own pipeline root, the shared tracking store and eval set."""
    data = to_dict(cfg)
    data["pipeline"].update(root=root, stages=["prepare_data", "pretrain", "finetune", "evaluate"])
    data["data"]["shapes"]["seed"] = cfg.data.shapes.seed + cfg.retrain.data_seed_offset * round_no
    data["tracking"]["tracking_uri"] = tracking_uri
    data["eval"]["data"] = {**cfg.eval.data, **eval_uris}
    data["finetune"]["init_from"] = init_from
    return from_dict(data)


def _score(outputs: dict[str, Any], metric: str, who: str) -> float:
    if metric not in outputs:
        found = sorted(k for k in outputs if k.startswith("eval/"))
        raise ConfigError(f"config key 'retrain.metric' = {metric!r}: not among the {who}'s eval metrics {found}")
    return round(float(outputs[metric]), 4)  # the evaluate stage reports 4 decimals; compare like with like


def _train_challenger(rcfg: Config, champion: tuple[str, str] | None) -> dict[str, Any]:
    """Run the round's workflow; with ``finetune.init_from`` the champion stands in for the pretrain output."""
    from pipelines.workflow.runner import Workflow

    external = {}
    if rcfg.finetune.init_from and champion:
        external["pretrain"] = {"model": rcfg.finetune.init_from, "source": f"champion v{champion[0]}"}
    return {r.name: r for r in Workflow(rcfg, external=external).run()}


def _score_champion(client, rcfg: Config, champion: tuple[str, str], parent_run: str, exp_id: str) -> float:
    """Evaluate the champion's export on the round's frozen eval set, in a run nested under the decision run."""
    from deco_core.eval.runner import evaluate
    from pipelines.ops.runtime import ensure_ray

    ensure_ray(rcfg)
    run_id = client.create_run(exp_id, run_name=f"champion-eval-v{champion[0]}",
                               tags={PARENT_TAG: parent_run, "deco.model_version": champion[0]}).info.run_id
    tracking = TrackingConfig(tracking_uri=rcfg.tracking.tracking_uri, experiment=rcfg.tracking.experiment)
    result = evaluate(champion[1], rcfg.eval.tasks, rcfg.eval.data, join_uri(rcfg.pipeline.root, "champion", "eval"),
                      rcfg.eval, tracking, storage=rcfg.data.storage, run_id=run_id)
    client.set_terminated(run_id, "FINISHED")
    return _score(result["metrics"], rcfg.retrain.metric, "champion")


def retrain(cfg: Config) -> RetrainDecision:
    """One round: fresh data → challenger (finetune from champion, or scratch) → evaluate challenger and champion
    on the same frozen eval set → register the challenger → promote iff it wins by the margin.

    Local folders go under ``<pipeline.root>/<timestamp>-r<round>`` (the champion's export in ``champion/model``);
    with an s3:// root they are staged in a temporary folder that is removed afterwards.
    """
    from deco_core.eval.eval_sets import eval_data
    from deco_core.tracking import registry_client
    from deco_core.tracking.registry import register_model

    rc, name, storage = cfg.retrain, cfg.tracking.registered_model, cfg.data.storage
    check_retrain_config(rc)
    base = cfg.pipeline.root if is_remote(cfg.pipeline.root) else str(Path(cfg.pipeline.root).resolve())
    tracking_uri = resolve_tracking_uri(cfg.tracking, base)
    client = registry_client(tracking_uri)
    round_no = 1 + len(client.search_model_versions(f"name='{name}'"))
    root = join_uri(base, f"{time.strftime('%Y%m%d-%H%M%S')}-r{round_no}")
    eval_uris = eval_data(replace(cfg, pipeline=replace(cfg.pipeline, root=base)))  # the same shards every round
    with tempfile.TemporaryDirectory(prefix="deco-retrain-") as scratch:
        local = scratch if is_remote(root) else root
        champion = _fetch_champion(client, tracking_uri, name, join_uri(local, "champion"))
        init = rc.init if champion else "scratch"
        init_from = None
        if init == "champion" and champion:
            init_from = copy_dir(champion[1], join_uri(root, "champion", "model"), storage) \
                if is_remote(root) else champion[1]
        rcfg = round_config(cfg, round_no, root, tracking_uri, eval_uris, init_from)
        log.info("retrain round %d under %s: init=%s, data seed %d", round_no, root, init, rcfg.data.shapes.seed)
        reports = _train_challenger(rcfg, champion)
        challenger_score = _score(reports["evaluate"].outputs, rc.metric, "challenger")
        exp_id = ensure_experiment(client, cfg.tracking.experiment, base)
        run_id = client.create_run(exp_id, run_name="retrain-decision", tags={"deco.round": str(round_no)}).info.run_id
        champion_score = _score_champion(client, rcfg, champion, run_id, exp_id) if champion else None
        ft = reports["finetune"]
        model_dir = ft.outputs["model"]
        if is_remote(model_dir):
            model_dir = copy_dir(model_dir, join_uri(scratch, "challenger"), storage)
        scores = {k: v for k, v in reports["evaluate"].outputs.items() if k.startswith("eval/")}
        version = register_model(tracking_uri, ft.run_id, model_dir, name,
                                 {"deco.round": round_no, "deco.init": init, "deco.data_seed": rcfg.data.shapes.seed,
                                  **scores}, aliases=("challenger",))
    champion_version = champion[0] if champion else None
    params = {"round": round_no, "init": init, "data_seed": rcfg.data.shapes.seed, "root": root,
              "challenger_version": version, "champion_version": champion_version or "none"}
    decision = promote_if_better(tracking_uri, name, version, challenger_score, champion_score, rc,
                                 experiment=cfg.tracking.experiment, run_id=run_id, params=params, root=base)
    after = client.get_registered_model(name).aliases["champion"]
    return RetrainDecision(decision, rc.metric, version, challenger_score, champion_version, champion_score,
                           str(after), rc.margin, rc.higher_is_better, init, rcfg.data.shapes.seed, root, run_id)
