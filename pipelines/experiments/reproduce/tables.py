"""Markdown of ``reproduce.run``: setup, efficiency/convergence table, score and task tables (mean ± 95 %
t interval over seeds, in points), the verdict table of the paper's claims (DeCo-minus-compressive deltas paired
by seed), the convergence plot and the definitions behind each column. Every number comes from the summary built
by ``reproduce.report`` out of measured runs. A summary published before intervals (no ``comparisons``) renders
as it did then: mean ± sample std, and claims judged against the seed spread."""

from __future__ import annotations

import statistics
from typing import Any

from deco_core.eval.tasks import REC_EXPRESSION_SPLITS, TASKS
from pipelines.experiments.reproduce.stats import (
    ATTRIBUTE_REC,
    CLAIMS,
    COMPRESSIVE,
    GROUPS,
    LOCALITY,
    STAGES,
    Claim,
    deco_vs_compressive,
    has_interval,
)
from pipelines.workflow.summary import fmt, markdown_table

PAPER = ("The paper reports +0.9 (MLLM benchmarks), +7.1 (visual localization) and +2.9 (open-ended VQA) "
         "for DeCo over compressive projectors at LLaVA-1.5 scale.")


def _ms(stat: dict[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± 95 % half-width (n=k)`` of a stats dict, optionally scaled (fractions -> points); one seed has no
    interval and says so. A stats dict without ``ci95`` (published before intervals) shows its sample std."""
    mean, n = stat["mean"] * scale, stat["n"]
    if n == 1:
        return f"{mean:.{digits}f} (n=1)" if "ci95" not in stat else f"{mean:.{digits}f} (n=1, no interval)"
    spread = stat["ci95"] if has_interval(stat) else stat["std"]
    return f"{mean:.{digits}f} ± {spread * scale:.{digits}f} (n={n})"


def _with_intervals(summary: dict[str, Any]) -> bool:
    """Whether the summary carries intervals and paired comparisons (published after they were added)."""
    return "comparisons" in summary


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


def _score_columns(summary: dict[str, Any]) -> list[tuple[str, str, str, float, int]]:
    """(title, section and key in a config's aggregate, scale, digits) of the score table; attribute REC (the
    primary localization score) where every config measured it."""
    cols = [(f"{t} (points)", "groups", g, 100.0, 1) for g, t in GROUPS.items()]
    if all(ATTRIBUTE_REC in c.get("tasks", {}) for c in summary["configs"].values()):
        cols.insert(2, ("Attribute REC, primary (points)", "tasks", ATTRIBUTE_REC, 100.0, 1))
    return cols + [(t, "locality", k, 1.0, 2) for k, t in LOCALITY.items()]


def _scores(summary: dict[str, Any]) -> list[str]:
    cols = _score_columns(summary)
    rows = [[f"`{name}`", c["visual_tokens"], *(_ms(c[section][key], scale, digits)
                                                for _, section, key, scale, digits in cols)]
            for name, c in summary["configs"].items()]
    spread = "95 % interval" if _with_intervals(summary) else "sample std"
    out = [f"## Scores (mean ± {spread} over seeds)", "",
           markdown_table(["config", "visual tokens", *(c[0] for c in cols)], rows), ""]
    if _with_intervals(summary):
        return out + _tasks(summary)
    if summary["deltas"]:
        drows = [[m, ", ".join(d["baselines"]), *(f"{100 * d[g]:+.1f}" for g in GROUPS),
                  *(f"{d[k]:+.2f}" for k in LOCALITY)] for m, d in summary["deltas"].items()]
        out += ["### DeCo minus the compressive projectors (means, same M)", "",
                markdown_table(["M", "compressive baselines", *GROUPS.values(), *LOCALITY.values()], drows), "",
                PAPER, ""]
    return out


def _task_keys(configs: dict[str, dict[str, Any]]) -> list[str]:
    """``task/metric`` of each task's primary metric (REC: also its expression splits) that every config has."""
    keys = []
    for t in TASKS.values():
        splits = [f"{t.primary}_{split}" for split in REC_EXPRESSION_SPLITS] if t.metric == "rec" else []
        keys += [f"{t.name}/{m}" for m in (t.primary, *splits)]
    return [k for k in keys if all(k in c.get("tasks", {}) for c in configs.values())]


def _tasks(summary: dict[str, Any]) -> list[str]:
    """Per config, each task's primary metric and the REC expression splits (points), then the blind baseline
    (mean over every run) and chance where the runs record them."""
    keys = _task_keys(summary["configs"])
    if not keys:
        return []
    rows = [[f"`{name}`", *(_ms(c["tasks"][k], 100) for k in keys)] for name, c in summary["configs"].items()]
    split = [k.split("/", 1) for k in keys]
    blind = [[r["tasks"].get(f"{task}/blind/{metric}") for r in summary["runs"]] for task, metric in split]
    if any(None not in b for b in blind):
        rows.append(["blind (blank image, mean over runs)",
                     *(f"{100 * statistics.fmean(b):.1f}" if None not in b else "—" for b in blind)])
    chance = [TASKS[task].chance if metric == TASKS[task].primary else None for task, metric in split]
    if any(c is not None for c in chance):
        rows.append(["chance", *(f"{100 * c:.1f}" if c is not None else "—" for c in chance)])
    return ["### Task metrics (points, mean ± 95 % interval over seeds)", "",
            markdown_table(["config", *(f"{task} {metric}" for task, metric in split)], rows), ""]


def spread_verdict(advantage: float, spread: float) -> str:
    """DeCo's advantage (positive = DeCo better) against the seed spread of the configs compared (the rule of
    summaries published before intervals)."""
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
                                                   f"{spread_verdict(margins[g], spread)}")
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
    cells[f"DeCo ≥ compressive: {LOCALITY[k].lower()}"] = f"{lift:+.2f} (seed std ≤ {spread:.2f}): {spread_verdict(lift, spread)}"
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
                                                  f"(seed std ≤ {spread:.0f}): {spread_verdict(c_steps - d_steps, spread)}")
    return cells


def spread_claims_section(summary: dict[str, Any]) -> list[str]:
    """The paper's claims, per M, judged against the seed spread (summaries published before intervals; only where
    DeCo and a compressive projector both ran)."""
    configs = summary["configs"]
    columns = {m: _claim_cells(configs[deco], [configs[c] for c in comp], summary["deltas"][str(m)])
               for m, (deco, comp) in deco_vs_compressive(configs).items()}
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


def _delta_cell(delta: dict[str, Any], claim: Claim) -> str:
    """One paired comparison: ``+12.3 [+5.1, +19.5] pts (n=3): holds``; one seed: no interval, undecided."""
    scale, unit, digits = claim.scale, claim.unit, 1 if claim.unit else 2
    if "delta" in delta:  # deterministic (parameters)
        return f"{delta['delta'] * scale:+,.0f}: {delta['verdict']}"
    if "mean" not in delta:  # not comparable
        return delta["verdict"]
    mean = f"{delta['mean'] * scale:+.{digits}f}"
    if not has_interval(delta):
        return f"{mean}{unit} (n=1): {delta['verdict']}"
    return (f"{mean} [{delta['low'] * scale:+.{digits}f}, {delta['high'] * scale:+.{digits}f}]{unit} "
            f"(n={delta['n']}): {delta['verdict']}")


def verdicts_section(summary: dict[str, Any]) -> list[str]:
    """Per M: each claim's DeCo-minus-compressive delta, paired by seed, with its 95 % interval and verdict,
    against each compressive projector and against their mean."""
    if not summary["comparisons"]:
        return []
    claims = {c.title: c for c in CLAIMS}
    out = ["## The paper's claims, as measured here", "",
           "DeCo (avg) minus each compressive projector at the same M, and minus their mean, paired by seed (the "
           "same seed gives both the same data order): mean of the per-seed deltas [95 % Student t interval, n − 1 "
           "degrees of freedom]. Verdict: **holds** when the interval lies entirely on the claimed side of 0 (DeCo "
           "higher; fewer parameters or steps), **does not hold** when entirely on the other side, **within "
           "noise** when it contains 0; with one seed there is no interval and no verdict. A score that no config "
           "compared lifts above its blind baseline (blank image) or chance (0 where neither was recorded) is "
           "not testable. Parameters are deterministic.", ""]
    for m, comparison in summary["comparisons"].items():
        rows = []
        vs = comparison["baselines"] + (["compressive mean"] if len(comparison["baselines"]) > 1 else [])
        for title, row in comparison["claims"].items():
            claim = claims.get(title, Claim(title, row["score"]))
            cells = (["not testable"] * len(vs) if "not_testable" in row
                     else [_delta_cell(row["vs"][name], claim) for name in vs])
            rows.append([title, *cells])
        out += [f"### M = {m}: `{comparison['deco']}` minus", "",
                markdown_table(["claim", *(f"`{v}`" if v in summary["configs"] else v for v in vs)], rows), ""]
    return out + [PAPER, ""]


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
           ("- Interval: 95 % Student t interval of the mean over seeds (n − 1 degrees of freedom), shown as "
            "± its half-width; undefined for a single seed." if _with_intervals(summary)
            else "- Spread: sample standard deviation over seeds (n=1: none)."), ""]
    if summary["failed"]:
        out += ["## Failed runs (not in the tables)", "",
                *(f"- `{f['name']}`: {f['error']}" for f in summary["failed"]), ""]
    return out


def reproduce_markdown(summary: dict[str, Any]) -> str:
    """The whole ``reproduce.md``."""
    body = (_setup(summary["setup"], summary) + _efficiency(summary) + _scores(summary)
            + (verdicts_section(summary) if _with_intervals(summary) else spread_claims_section(summary))
            + ["## Convergence", "", "![loss vs step](convergence.png)", "",
               f"Dotted grey lines: the loss thresholds of the table above ({', '.join(STAGES)})", ""]
            + _definitions(summary))
    return "\n".join(body)
