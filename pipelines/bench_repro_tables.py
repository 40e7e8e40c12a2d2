"""Markdown of ``pipelines.reproduce``: setup, efficiency/convergence table, score table (mean ± sample std over
seeds, in points), DeCo-minus-compressive deltas, the convergence plot and the definitions behind each column.
Every number comes from the summary built by ``bench_repro_report`` out of measured runs."""

from __future__ import annotations

import time
from typing import Any

from deco_core.eval.tasks import TASKS
from pipelines.bench_report import fmt, markdown_table
from pipelines.bench_repro_report import GROUPS, LOCALITY, STAGES


def _ms(stat: dict[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± std (n=k)`` of a stats dict, optionally scaled (fractions -> points)."""
    mean, std, n = stat["mean"] * scale, stat["std"] * scale, stat["n"]
    return f"{mean:.{digits}f} (n=1)" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def _steps(stat: dict[str, Any], max_steps: int) -> str:
    if stat["reached"] == 0:
        return f"not reached in {max_steps} ({stat['runs']} runs)"
    cell = _ms(stat, digits=0)
    return cell if stat["reached"] == stat["runs"] else f"{cell}; {stat['runs'] - stat['reached']} run(s) never"


def _mixture(shared: dict[str, Any]) -> str:
    """'pretrain: 4,000 pretrain; finetune mix: 8,000 finetune + 4,000 finetune_formats' (samples per folder)."""
    def names(sources: list) -> str:
        folders = [str(uri).rstrip("/").rsplit("/", 1)[-1] for uri, _ in sources]
        return " + ".join(f"{fmt(shared['samples'][f + '_samples'])} {f}" for f in folders)

    return f"pretrain: {names(shared['pretrain'])}; finetune mix: {names(shared['finetune'])}"


def _setup(s: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    shared = s["shared"]
    default = (shared["default_steps"]["pretrain"], shared["default_steps"]["finetune"])
    reduced = (s["pretrain_steps"], s["finetune_steps"]) != default
    return [
        "# DeCo vs compressive projectors, in miniature (ShapesWorld, tiny scale)", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')}: {len(summary['runs'])} runs in {summary['wall_s'] / 60:.1f} min "
        f"(grid `{', '.join(s['projectors'])}` × M = {', '.join(map(str, s['tokens']))} visual tokens from the 12×12 "
        f"patch grid{', plus `' + s['reference'] + '` on all 144 patches' if s['reference'] else ''}; seeds "
        f"{', '.join(map(str, s['seeds']))}). Every run reads the same shards ({_mixture(shared)}, prepared once) and "
        "is scored on the "
        f"same frozen eval set ({s['eval_samples']} questions per task) and {s['analysis_samples']} locality probes.",
        "",
        f"Steps: **{s['pretrain_steps']} pretrain + {s['finetune_steps']} finetune** (global batch 32)"
        + (f", cut from the tiny default {default[0]} + {default[1]} so the whole grid fits "
           "the time budget on 2 CPU cores: absolute scores are far below a converged run; compare projectors with "
           "each other, not with the paper." if reduced else "."),
        "",
    ]


def _efficiency(summary: dict[str, Any]) -> list[str]:
    s, thr = summary["setup"], summary["thresholds"]
    rows = []
    for name, c in summary["configs"].items():
        tp = c["trainable_params"]
        rows.append([f"`{name}`", c["visual_tokens"], c["projector_params"],
                     f"{fmt(tp['pretrain'])} / {fmt(tp['finetune'])}", _ms(c["step_s"]["finetune"], digits=3),
                     _ms(c["train_wall_s"]),
                     _steps(c["steps_to_loss"]["pretrain"], s["pretrain_steps"]),
                     _steps(c["steps_to_loss"]["finetune"], s["finetune_steps"]),
                     _ms(c["final_loss"]["finetune"], digits=3)])
    header = ["config", "visual tokens", "projector params", "trainable params (pretrain / finetune)",
              "finetune step time (s)", "train wall time (s)", f"pretrain steps to loss ≤ {thr['pretrain']:.3f}",
              f"finetune steps to loss ≤ {thr['finetune']:.3f}", "final finetune loss"]
    rule = s["threshold_rule"]
    return ["## Efficiency and convergence", "", markdown_table(header, rows), "",
            f"Loss thresholds: pretrain {thr['pretrain']:.3f} ({rule['pretrain']}), finetune {thr['finetune']:.3f} "
            f"({rule['finetune']}); steps are the first logged step (every {s['pretrain_log_every']} / "
            f"{s['finetune_log_every']} steps) at or below it. Step time: `train/step_time_s` averaged over the "
            "logged windows after the first. Wall time: pretrain + finetune stage time, Ray Train start-up, export "
            "and checkpointing included (Ray itself is started before the grid).", ""]


def _scores(summary: dict[str, Any]) -> list[str]:
    rows = [[f"`{name}`", c["visual_tokens"], *(_ms(c["groups"][g], 100) for g in GROUPS),
             *(_ms(c["locality"][k], digits=2) for k in LOCALITY)] for name, c in summary["configs"].items()]
    header = ["config", "visual tokens", *(f"{t} (points)" for t in GROUPS.values()), *LOCALITY.values()]
    out = ["## Scores (mean ± sample std over seeds)", "", markdown_table(header, rows), ""]
    if summary["deltas"]:
        drows = [[m, ", ".join(d["baselines"]), *(f"{100 * d[g]:+.1f}" for g in GROUPS),
                  *(f"{d[k]:+.2f}" for k in LOCALITY)] for m, d in summary["deltas"].items()]
        out += ["### DeCo minus the compressive projectors (means, same M)", "",
                markdown_table(["M", "compressive baselines", *GROUPS.values(), *LOCALITY.values()], drows), "",
                "The paper reports +0.9 (MLLM benchmarks), +7.1 (visual localization) and +2.9 (open-ended VQA) "
                "for DeCo over compressive projectors at LLaVA-1.5 scale.", ""]
    return out


def _definitions(summary: dict[str, Any]) -> list[str]:
    groups: dict[str, list[str]] = {}
    tasks = {t.split("/")[0] for r in summary["runs"] for t in r["tasks"]}
    for name in sorted(tasks):
        groups.setdefault(TASKS[name].group, []).append(f"{name} ({TASKS[name].primary})")
    out = ["## Definitions", "",
           "- Groups (mean of each task's primary metric, ×100): "
           + "; ".join(f"{g}: {', '.join(ts)}" for g, ts in sorted(groups.items())) + ".",
           "- Locality lift: R-GAE text-to-patch relevance mass inside the named object's box divided by the box's "
           "share of patches (1 = uniform); pointing hit rate: the most relevant patch lies in the box.",
           "- Spread: sample standard deviation over seeds (n=1: none).", ""]
    if summary["failed"]:
        out += ["## Failed runs (not in the tables)", "",
                *(f"- `{f['name']}`: {f['error']}" for f in summary["failed"]), ""]
    return out


def reproduce_markdown(summary: dict[str, Any]) -> str:
    """The whole ``reproduce.md``."""
    body = (_setup(summary["setup"], summary) + _efficiency(summary) + _scores(summary)
            + ["## Convergence", "", "![loss vs step](convergence.png)", "",
               f"Dotted grey lines: the loss thresholds of the table above ({', '.join(STAGES)})", ""]
            + _definitions(summary))
    return "\n".join(body)
