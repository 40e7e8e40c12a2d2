"""Markdown of ``pipelines.reproduce``: setup, efficiency/convergence table, score table (mean ± sample std over
seeds, in points), DeCo-minus-compressive deltas, the convergence plot and the definitions behind each column.
Every number comes from the summary built by ``bench_repro_report`` out of measured runs."""

from __future__ import annotations

import statistics
from typing import Any

from deco_core.eval.tasks import TASKS
from pipelines.bench_report import fmt, markdown_table
from pipelines.bench_repro_report import COMPRESSIVE, GROUPS, LOCALITY, STAGES, deco_vs_compressive


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
        (f"Measured {summary['measured_at']}: " if "measured_at" in summary else "")
        + f"{len(summary['runs'])} runs in {summary['wall_s'] / 60:.1f} min "
        f"(grid `{', '.join(s['projectors'])}` × M = {', '.join(map(str, s['tokens']))} visual tokens from the 12×12 "
        f"patch grid{', plus `' + s['reference'] + '` on all 144 patches' if s['reference'] else ''}; seeds "
        f"{', '.join(map(str, s['seeds']))}). Every run reads the same shards ({_mixture(shared)}, prepared once) and "
        "is scored on the "
        f"same frozen eval set ({s['eval_samples']} questions per task) and {s['analysis_samples']} locality probes.",
        "",
        f"Steps: **{s['pretrain_steps']} pretrain + {s['finetune_steps']} finetune** (global batch 32)"
        + (f", cut from the tiny default {default[0]} + {default[1]} to bound the grid's time on 2 CPU cores: "
           "absolute scores are far below a converged run; compare projectors with each other, not with the paper."
           if reduced else "."),
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


def verdict(advantage: float, spread: float) -> str:
    """DeCo's advantage (positive = DeCo better) against the seed spread of the configs compared."""
    if advantage == 0 and spread == 0:
        return "tie"
    if abs(advantage) <= spread:
        return "within seed spread"
    return "holds" if advantage > 0 else "does not hold"


def _claim_cells(deco: dict[str, Any], comp: list[dict[str, Any]], delta: dict[str, Any]) -> dict[str, str]:
    """One M: the paper's claims tested on the mean differences (``delta``, from the summary), each against the
    largest seed std of the configs compared."""
    cells = {}
    margins = {}
    unlearned = set()
    for g, title in GROUPS.items():
        if all(v == 0 for c in (deco, *comp) for v in c["groups"][g]["values"]):
            unlearned.add(g)
            cells[f"DeCo ≥ compressive: {title}"] = "not testable: every run scores 0"
            continue
        margins[g] = 100 * delta[g]
        spread = 100 * max(c["groups"][g]["std"] for c in (deco, *comp))
        cells[f"DeCo ≥ compressive: {title}"] = (f"{margins[g]:+.1f} pts (seed std ≤ {spread:.1f}): "
                                                   f"{verdict(margins[g], spread)}")
    others = [v for k, v in margins.items() if k != "localization"]
    if "localization" in unlearned or not others:
        cells["largest margin on localization"] = "not testable: " + (
            "every run scores 0 on localization" if "localization" in unlearned else "no other group learned")
    else:
        loc = margins["localization"]
        cells["largest margin on localization"] = (f"{loc:+.1f} vs {max(others):+.1f} pts: "
                                                   + ("holds" if loc > max(others) else "does not hold"))
    k = next(iter(LOCALITY))
    lift = delta[k]
    spread = max(c["locality"][k]["std"] for c in (deco, *comp))
    cells[f"DeCo ≥ compressive: {LOCALITY[k].lower()}"] = f"{lift:+.2f} (seed std ≤ {spread:.2f}): {verdict(lift, spread)}"
    fewest = min(comp, key=lambda c: c["projector_params"])
    cells["fewer projector parameters"] = (
        f"{fmt(deco['projector_params'])} vs {fmt(fewest['projector_params'])} ({fewest['projector']}, the smallest): "
        + ("holds" if deco["projector_params"] < fewest["projector_params"] else "does not hold"))
    for stage in STAGES:
        reached = [c["steps_to_loss"][stage] for c in (deco, *comp)]
        if any(r["reached"] < r["runs"] for r in reached):
            cells[f"faster convergence ({stage})"] = "some runs never reached the threshold: not comparable"
            continue
        d_steps, c_steps = reached[0]["mean"], statistics.fmean(r["mean"] for r in reached[1:])
        spread = max(r["std"] for r in reached)
        cells[f"faster convergence ({stage})"] = (f"{d_steps:.0f} vs {c_steps:.0f} steps to the loss threshold "
                                                  f"(seed std ≤ {spread:.0f}): {verdict(c_steps - d_steps, spread)}")
    return cells


def claims_section(summary: dict[str, Any]) -> list[str]:
    """The paper's claims, per M, measured on this grid (only where DeCo and a compressive projector both ran)."""
    columns = {m: _claim_cells(deco, comp, summary["deltas"][str(m)])
               for m, (deco, comp) in deco_vs_compressive(summary["configs"]).items()}
    if not columns:
        return []
    claims = list(next(iter(columns.values())))
    rows = [[claim, *(columns[m][claim] for m in columns)] for claim in claims]
    return ["## The paper's claims, as measured here", "",
            "DeCo (avg) against the mean of the compressive projectors present at the same M "
            f"({', '.join(p for p in COMPRESSIVE if any(c['projector'] == p for c in summary['configs'].values()))}). "
            "A claim holds when DeCo's advantage exceeds the largest seed standard deviation of the configs compared"
            + ("; with a single seed there is no spread and the sign alone decides." if min(
                c["groups"][g]["n"] for c in summary["configs"].values() for g in GROUPS) < 2 else "."),
            "", markdown_table(["claim", *(f"M = {m}" for m in columns)], rows), ""]


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
    body = (_setup(summary["setup"], summary) + _efficiency(summary) + _scores(summary) + claims_section(summary)
            + ["## Convergence", "", "![loss vs step](convergence.png)", "",
               f"Dotted grey lines: the loss thresholds of the table above ({', '.join(STAGES)})", ""]
            + _definitions(summary))
    return "\n".join(body)
