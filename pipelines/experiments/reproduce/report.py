"""Measurements and report of ``reproduce.run``: one record per finished run (parameters, wall time, loss
curves from MLflow, eval task and group scores, locality), aggregation over seeds (mean, sample std and 95 %
t interval, ``reproduce.stats``), steps to a fixed loss, DeCo-minus-compressive deltas (of the means, and paired
by seed with a verdict per claim), and the outputs (JSON, markdown tables, convergence plot, MLflow run)."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from deco_core.config import Config
from pipelines.experiments.bench.report import check_complete, flatten_numbers, log_summary_run, write_json
from pipelines.experiments.reproduce.stats import (
    CONFIDENCE,
    GROUPS,
    LOCALITY,
    STAGES,
    compare,
    deco_vs_compressive,
    has_interval,
    stats,
    steps_to,
)
from pipelines.experiments.reproduce.tables import reproduce_markdown

STATISTICS = {  # how the summary's intervals and verdicts are made (stored beside them)
    "interval": f"{CONFIDENCE:.0%} Student t over seeds, n - 1 degrees of freedom (ci95: half-width; n = 1: undefined)",
    "deltas": "DeCo minus compressive, paired by seed (same seed = same data order)",
    "verdict": "holds: interval entirely on the claimed side of 0; does not hold: entirely on the other; "
               "within noise: contains 0",
}


def _history(client, run_id: str, key: str = "train/loss") -> list[tuple[int, float]]:
    """A metric as (step, value), one value per step (the last logged, should a stage have resumed)."""
    by_step = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}
    if not by_step:
        raise RuntimeError(f"MLflow run {run_id} logged no {key}")
    return sorted(by_step.items())


def _steady_step_time(client, run_id: str) -> float:
    """Mean train/step_time_s over the logged windows after the first (which pays the data warm-up)."""
    values = [v for _, v in _history(client, run_id, "train/step_time_s")]
    return statistics.fmean(values[1:] or values)


def collect_run(cfg: Config, spec: dict[str, Any], state: dict[str, Any], tracking_uri: str,
                tokenizer) -> dict[str, Any]:
    """One finished run's measurements from its workflow state (stage outputs and times) and MLflow runs."""
    from mlflow import MlflowClient

    from deco_core.model.deco import DecoModel

    client = MlflowClient(tracking_uri)
    loss = {s: _history(client, state[s]["outputs"]["mlflow_run"]) for s in STAGES}
    step_s = {s: _steady_step_time(client, state[s]["outputs"]["mlflow_run"]) for s in STAGES}
    model = DecoModel.from_config(cfg.model, tokenizer)
    trainable = {}
    for s in STAGES:
        t = getattr(cfg, s)
        trainable[s] = sum(n for n, _ in model.freeze_for_stage(s, t.train_vision, t.train_projector,
                                                                 t.train_llm).values())
    evaluated, analysis = state["evaluate"]["outputs"], state["analyze"]["outputs"]
    wall = {s: float(state[s]["seconds"]) for s in (*STAGES, "evaluate", "analyze")}
    return {
        **{k: v for k, v in spec.items() if k != "tokens"}, "visual_tokens": model.num_image_tokens, "projector_params": model.parameter_summary()["projector"][1],
        "trainable_params": trainable, "wall_s": wall, "step_s": step_s, "loss": loss,
        "final_loss": {s: loss[s][-1][1] for s in STAGES},
        "groups": {slug: float(evaluated[f"eval/group/{slug}"]) for slug in GROUPS},
        "tasks": {k[len("eval/"):]: float(v) for k, v in evaluated.items()
                  if k.startswith("eval/") and not k.startswith("eval/group/")},
        "locality": {k: float(analysis[k]) for k in LOCALITY},
    }


def _steps_stats(values: list[int | None]) -> dict[str, Any]:
    reached = [v for v in values if v is not None]
    out = stats(reached) if reached else {"n": len(values)}
    return {**out, "reached": len(reached), "runs": len(values)}


def _aggregate(runs: list[dict[str, Any]], thresholds: dict[str, float]) -> dict[str, dict[str, Any]]:
    by_config: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_config[run["config"]].append(run)
    out = {}
    for name, rs in by_config.items():
        first = rs[0]
        out[name] = {
            "projector": first["projector"], "visual_tokens": first["visual_tokens"],
            "projector_params": first["projector_params"], "trainable_params": first["trainable_params"],
            "seeds": [r["seed"] for r in rs],
            "train_wall_s": stats([r["wall_s"]["pretrain"] + r["wall_s"]["finetune"] for r in rs]),
            "step_s": {s: stats([r["step_s"][s] for r in rs]) for s in STAGES},
            "steps_to_loss": {s: _steps_stats([steps_to(r["loss"][s], thresholds[s]) for r in rs]) for s in STAGES},
            "final_loss": {s: stats([r["final_loss"][s] for r in rs]) for s in STAGES},
            "groups": {g: stats([r["groups"][g] for r in rs]) for g in GROUPS},
            "locality": {k: stats([r["locality"][k] for r in rs]) for k in LOCALITY},
            "tasks": {k: stats([r["tasks"][k] for r in rs]) for k in _task_metrics(rs)},
        }
    return out


def _task_metrics(runs: list[dict[str, Any]]) -> list[str]:
    """The task metrics every run of a config measured, counts (``n``, ``n_<split>``) left out."""
    keys = set.intersection(*(set(r["tasks"]) for r in runs))
    return sorted(k for k in keys if not (k.rsplit("/", 1)[-1] == "n" or k.rsplit("/", 1)[-1].startswith("n_")))


def deco_deltas(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per M: DeCo (avg) minus the mean of the compressive projectors present, for every score column."""
    out = {}
    for m, (deco_name, names) in deco_vs_compressive(configs).items():
        deco, comp = configs[deco_name], [configs[n] for n in names]
        row = {"baselines": [c["projector"] for c in comp]}
        for section, keys in (("groups", GROUPS), ("locality", LOCALITY)):
            for k in keys:
                row[k] = deco[section][k]["mean"] - statistics.fmean(c[section][k]["mean"] for c in comp)
        out[str(m)] = row
    return out


def deco_comparisons(configs: dict[str, dict[str, Any]], runs: list[dict[str, Any]],
                     thresholds: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per M: the paper's claims for DeCo (avg) against each compressive projector and their mean, the deltas
    paired by seed, each with its 95 % interval and verdict (``reproduce.stats.compare``)."""
    return {str(m): {"deco": deco, "baselines": comp, "claims": compare(runs, deco, comp, thresholds)}
            for m, (deco, comp) in deco_vs_compressive(configs).items()}


def summarise(rc, runs: list[dict[str, Any]], failed: list[dict[str, str]], shared: dict[str, Any],
              wall_s: float) -> dict[str, Any]:
    """Thresholds (configured, else the highest final loss over runs), per-config aggregates, deltas of the means
    and the claims' paired comparisons."""
    thresholds = {}
    for s in STAGES:
        fixed = getattr(rc, f"{s}_loss_threshold")
        thresholds[s] = float(fixed) if fixed is not None else max(r["final_loss"][s] for r in runs)
    configs = _aggregate(runs, thresholds)
    from dataclasses import asdict

    return {"setup": {**asdict(rc), "shared": shared,
                      "threshold_rule": {s: "configured" if getattr(rc, f"{s}_loss_threshold") is not None
                                         else "highest final loss over runs" for s in STAGES}},
            "thresholds": thresholds, "configs": configs, "deltas": deco_deltas(configs),
            "comparisons": deco_comparisons(configs, runs, thresholds), "statistics": STATISTICS, "runs": runs,
            "failed": failed, "wall_s": wall_s, "measured_at": time.strftime("%Y-%m-%d %H:%M")}


def plot_convergence(summary: dict[str, Any], path: Path) -> Path:
    """Loss vs step (mean over seeds) for every config: pretrain and finetune panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {16: "-", 36: "--"}
    projectors = sorted({c["projector"] for c in summary["configs"].values()})
    colours = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(projectors)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, stage in zip(axes, STAGES, strict=True):
        for name, conf in summary["configs"].items():
            curves = [r["loss"][stage] for r in summary["runs"] if r["config"] == name]
            steps = [s for s, _ in curves[0]]
            mean = [statistics.fmean(c[i][1] for c in curves if i < len(c)) for i in range(len(steps))]
            ax.plot(steps, mean, styles.get(conf["visual_tokens"], ":"), color=colours[conf["projector"]],
                    label=f"{name} (M={conf['visual_tokens']})")
        ax.axhline(summary["thresholds"][stage], color="grey", lw=0.8, ls=":")
        ax.set(title=f"{stage} (train/loss, mean over seeds)", xlabel="optimizer step", ylabel="loss")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(summary: dict[str, Any], out: Path, tracking_uri: str, experiment: str) -> dict[str, Path]:
    """reproduce.json, reproduce.md, convergence.png, and one MLflow summary run with all three."""
    check_complete({k: summary[k] for k in ("thresholds", "configs", "runs")}, "reproduce")
    files = {"json": write_json(out / "reproduce.json", summary),
             "plot": plot_convergence(summary, out / "convergence.png")}
    files["markdown"] = out / "reproduce.md"
    files["markdown"].write_text(reproduce_markdown(summary))
    params = {k: v for k, v in summary["setup"].items() if k not in ("shared", "threshold_rule")}
    metrics = flatten_numbers({name: {"train_wall_s": c["train_wall_s"]["mean"],
                                      **{f"step_s/{s}": v["mean"] for s, v in c["step_s"].items()},
                                      **{f"group/{g}": v["mean"] for g, v in c["groups"].items()},
                                      **{f"group/{g}/ci95": v["ci95"] for g, v in c["groups"].items()
                                         if has_interval(v)},
                                      **{f"locality/{k}": v["mean"] for k, v in c["locality"].items()},
                                      **{f"final_loss/{s}": v["mean"] for s, v in c["final_loss"].items()}}
                               for name, c in summary["configs"].items()})
    metrics["grid_wall_s"] = summary["wall_s"]
    log_summary_run(tracking_uri, experiment, out, f"reproduce-{len(summary['runs'])}runs", params, metrics,
                    list(files.values()))
    return files
