"""Seed statistics of ``reproduce.run``: mean ± 95 % Student t interval over seeds (n - 1 degrees of
freedom; undefined for one seed), DeCo-minus-compressive deltas paired by seed (same seed = same data order and
initialisation), and a verdict per claim read off the delta's interval: "holds" when it lies entirely on the
claimed side of 0, "does not hold" when entirely on the other side, "within noise" when it contains 0."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deco_core.eval.tasks import TASKS

CONFIDENCE = 0.95
NO_INTERVAL = "undefined (n=1)"  # the ci95 field of a single value: a t interval needs at least two
ATTRIBUTE_REC = "shapes-rec/acc_at_0.5_attribute"  # the primary localization score (attribute expressions)
HOLDS, FAILS, NOISE = "holds", "does not hold", "within noise"
# fmt: off
GROUPS = {                      # eval/group/<slug> -> column title (paper groups)
    "mllm_benchmarks": "MLLM benchmarks",
    "localization":    "Visual localization",
    "open-ended_vqa":  "Open-ended VQA",
}
LOCALITY = {                    # analyze output -> column title
    "mass_lift":         "Locality lift",
    "pointing_hit_rate": "Pointing hit rate",
}
# fmt: on
COMPRESSIVE = ("qformer", "resampler", "c-abstractor")  # the paper's "traditional compressive projectors"
STAGES = ("pretrain", "finetune")
UNDECIDED = "undecided: one seed, no interval"


def t_cdf(t: float, df: int) -> float:
    """Student t distribution function for an integer ``df`` (the exact finite series, Abramowitz & Stegun
    26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi) * (theta + sin * (cos + 2/3 cos^3 + ...))
        term = total = math.cos(theta) if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * cos2
            total += term
        central = 2 / math.pi * (theta + sin * total)
    else:  # even: sin * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term = total = 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * cos2
            total += term
        central = sin * total
    return 0.5 + central / 2


def t_critical(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value t_{(1 + confidence) / 2, df} (bisection on ``t_cdf``)."""
    if df < 1:
        raise ValueError(f"a t interval needs df >= 1, got {df}")
    target, low, high = (1 + confidence) / 2, 0.0, 1e4
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < target else (low, mid)
    return (low + high) / 2


def stats(values: Iterable[float]) -> dict[str, Any]:
    """mean, sample std (0 for one value), n, the values, and the 95 % t interval: ``ci95`` (its half-width),
    ``low`` and ``high``; with one value ``ci95`` says the interval is undefined and there is no low/high."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("stats of no values")
    mean, n = statistics.fmean(vals), len(vals)
    out: dict[str, Any] = {"mean": mean, "std": statistics.stdev(vals) if n > 1 else 0.0, "n": n, "values": vals}
    if n < 2:
        return {**out, "ci95": NO_INTERVAL}
    half = t_critical(n - 1) * out["std"] / math.sqrt(n)
    return {**out, "ci95": half, "low": mean - half, "high": mean + half}


def has_interval(stat: Mapping[str, Any]) -> bool:
    return isinstance(stat.get("ci95"), float)


def verdict(stat: Mapping[str, Any], side: int = 1) -> str:
    """A claim on a delta's stats: ``side`` +1 claims it positive (DeCo scores higher), -1 negative (fewer)."""
    if not has_interval(stat):
        return UNDECIDED
    low, high = sorted((side * stat["low"], side * stat["high"]))
    return HOLDS if low > 0 else FAILS if high < 0 else NOISE


def steps_to(history: Sequence[Sequence[float]], threshold: float) -> int | None:
    """First logged step whose loss is <= threshold (None when never reached)."""
    return next((int(step) for step, value in history if value <= threshold), None)


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims: the score it compares (``kind/name``), the side DeCo should be on, its unit."""

    title: str
    score: str  # group/<slug>, task/<task>/<metric>, locality/<key>, steps/<stage> or params
    side: int = 1  # +1: DeCo's score is higher; -1: DeCo's is lower (fewer parameters, fewer steps)
    scale: float = 100.0  # display factor (fractions -> points)
    unit: str = " pts"


# fmt: off
CLAIMS = (
    Claim("MLLM benchmarks",                      "group/mllm_benchmarks"),
    Claim("Localization: attribute REC (primary)", f"task/{ATTRIBUTE_REC}"),
    Claim("Localization: overall REC",            "group/localization"),
    Claim("Open-ended VQA",                       "group/open-ended_vqa"),
    Claim("Fewer projector parameters",           "params",             -1, 1.0, ""),
    Claim("Faster convergence (pretrain)",        "steps/pretrain",     -1, 1.0, " steps"),
    Claim("Faster convergence (finetune)",        "steps/finetune",     -1, 1.0, " steps"),
    Claim("R-GAE locality (mass lift)",           "locality/mass_lift",  1, 1.0, ""),
)
# fmt: on


def run_score(run: Mapping[str, Any], score: str, thresholds: Mapping[str, float]) -> float | None:
    """One run's value of a claim's score (None: not measured in this run, or the threshold never reached)."""
    kind, _, name = score.partition("/")
    if kind == "params":
        return float(run["projector_params"])
    if kind == "steps":
        step = steps_to(run["loss"][name], thresholds[name])
        return None if step is None else float(step)
    value = run[{"group": "groups", "task": "tasks", "locality": "locality"}[kind]].get(name)
    return None if value is None else float(value)


def group_slug(group: str) -> str:
    """A task group as its ``eval/group/<slug>`` key (as the eval runner writes it)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", group.strip().lower())


def _task_floor(tasks: Mapping[str, float], key: str) -> float:
    """The level a task metric must beat to count as learned: its blind baseline (same model, blank image) or
    chance, whichever is higher; 0 when the run records neither."""
    task, _, metric = key.partition("/")
    chance = TASKS[task].chance if task in TASKS and metric == TASKS[task].primary else None
    return max([0.0, *(v for v in (tasks.get(f"{task}/blind/{metric}"), chance) if v is not None)])


def run_floor(run: Mapping[str, Any], score: str) -> float | None:
    """The blind/chance floor of a score in one run (a group: the mean over its tasks); None: no floor applies."""
    kind, _, name = score.partition("/")
    tasks = run["tasks"]
    if kind == "task":
        return _task_floor(tasks, name)
    if kind != "group":
        return None
    floors = [_task_floor(tasks, f"{t.name}/{t.primary}") for t in TASKS.values()
              if f"{t.name}/{t.primary}" in tasks and group_slug(t.group) == name]
    return statistics.fmean(floors) if floors else 0.0


def learned(runs: Sequence[Mapping[str, Any]], score: str) -> bool:
    """A config learned a score when its mean over seeds lies above the mean of its runs' floors."""
    floors = [run_floor(r, score) for r in runs]
    if any(f is None for f in floors):
        return True
    return statistics.fmean(run_score(r, score, {}) for r in runs) > statistics.fmean(floors)


def paired_delta(deco: Mapping[int, Mapping[str, Any]], others: Sequence[Mapping[int, Mapping[str, Any]]],
                 claim: Claim, thresholds: Mapping[str, float]) -> dict[str, Any]:
    """DeCo minus the mean of ``others`` (one config, or every compressive one), seed by seed, over the seeds
    all of them ran: the per-seed deltas, their stats and the verdict."""
    seeds = sorted(set(deco).intersection(*others))
    if not seeds:
        return {"verdict": "not comparable: no seed ran on both sides"}
    values = {s: [run_score(r[s], claim.score, thresholds) for r in (deco, *others)] for s in seeds}
    missing = sum(v is None for vs in values.values() for v in vs)
    if missing:
        reason = "never reached the loss threshold" if claim.score.startswith("steps/") else "not measured"
        return {"verdict": f"not comparable: {missing} run(s) {reason}"}
    deltas = [vs[0] - statistics.fmean(vs[1:]) for vs in values.values()]
    if claim.score == "params":  # deterministic: no seed noise
        delta = deltas[0]
        return {"delta": delta, "verdict": HOLDS if claim.side * delta > 0 else FAILS}
    delta_stats = stats(deltas)
    return {**delta_stats, "seeds": seeds, "verdict": verdict(delta_stats, claim.side)}


def compare(runs: Sequence[Mapping[str, Any]], deco: str, compressive: Sequence[str],
            thresholds: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Every claim for config ``deco`` against each compressive config and their mean, as
    ``{claim title: {"score", "side", "vs": {config | "compressive mean": paired delta}}}``; a claim on a score
    no compared config learned (each at or below its blind baseline/chance) is "not testable"; a score that a
    compared run did not record (attribute REC before the eval split it out) is left out."""
    by_config: dict[str, dict[int, Mapping[str, Any]]] = {}
    for run in runs:
        by_config.setdefault(run["config"], {})[int(run["seed"])] = run
    sides = {name: by_config[name] for name in (deco, *compressive)}
    out = {}
    compared = [r for rs in sides.values() for r in rs.values()]
    for claim in CLAIMS:
        if not claim.score.startswith("steps/") and any(run_score(r, claim.score, thresholds) is None
                                                        for r in compared):
            continue
        row: dict[str, Any] = {"score": claim.score, "side": "DeCo higher" if claim.side > 0 else "DeCo lower"}
        if not any(learned(list(rs.values()), claim.score) for rs in sides.values()):
            row["not_testable"] = "no config compared scores above its blind baseline/chance"
        else:
            row["vs"] = {name: paired_delta(sides[deco], [sides[name]], claim, thresholds) for name in compressive}
            if len(compressive) > 1:
                row["vs"]["compressive mean"] = paired_delta(sides[deco], [sides[c] for c in compressive], claim,
                                                             thresholds)
        out[claim.title] = row
    return out


def deco_vs_compressive(configs: dict[str, dict[str, Any]]) -> dict[int, tuple[str, list[str]]]:
    """Per M where both ran: the name of DeCo (avg)'s config and those of the compressive projectors."""
    out = {}
    for m in sorted({c["visual_tokens"] for c in configs.values()}):
        at_m = {name: c["projector"] for name, c in configs.items() if c["visual_tokens"] == m}
        deco = [name for name, p in at_m.items() if p == "deco"]
        comp = [name for name, p in at_m.items() if p in COMPRESSIVE]
        if deco and comp:
            out[m] = (deco[0], comp)
    return out
