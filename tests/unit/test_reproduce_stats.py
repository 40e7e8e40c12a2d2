"""The statistics of ``make reproduce``: the 95 % Student t interval over seeds (checked against hand-computed
values, undefined for one seed), DeCo-minus-compressive deltas paired by seed, the three verdicts and "not
testable", the summary and markdown built from synthetic runs, the grid of conf/reproduce/full.yaml, and the
committed docs/results/reproduce.json (published before intervals) still rendering as the README shows it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipelines.experiments.bench.report import check_complete
from pipelines.experiments.reproduce.report import summarise
from pipelines.experiments.reproduce.run import FULL_CONFIG, grid, load_reproduce_config
from pipelines.experiments.reproduce.stats import (
    ATTRIBUTE_REC,
    CLAIMS,
    FAILS,
    HOLDS,
    NO_INTERVAL,
    NOISE,
    UNDECIDED,
    compare,
    paired_delta,
    stats,
    t_critical,
    verdict,
)
from pipelines.experiments.reproduce.tables import reproduce_markdown
from pipelines.experiments.results import DOCS, ROOT, render_block

BASE = {0: 0.10, 1: 0.40, 2: 0.25}  # a per-seed effect every projector shares (same data order)
OFFSET = {  # projector -> per-seed offset of attribute REC above the shared seed effect
    "deco": {0: 0.20, 1: 0.22, 2: 0.18}, "qformer": {0: 0.0, 1: 0.01, 2: 0.0},
    "resampler": {0: 0.02, 1: 0.0, 2: 0.01}, "mlp": {0: 0.3, 1: 0.3, 2: 0.3},
}
PARAMS = {"deco": 24_832, "qformer": 556_544, "resampler": 93_696, "mlp": 24_832}


def _run(projector: str, seed: int, tokens: int = 16, rec_blind: float | None = 0.05) -> dict[str, Any]:
    """One run record shaped like ``collect_run``'s: attribute REC = shared seed effect + projector offset; overall
    REC noisy around it; POPE/MC at chance (MLLM unlearned); VQA lower for DeCo; DeCo's loss falls faster."""
    attr = BASE[seed] + OFFSET[projector][seed]
    rec = attr - 0.05 + (0.08 if (seed + len(projector)) % 2 else -0.08)
    vqa = 0.50 + 0.01 * seed - (0.05 if projector == "deco" else 0.0)
    tasks = {"shapes-rec/acc_at_0.5": rec, ATTRIBUTE_REC: attr, "shapes-rec/acc_at_0.5_position": 0.5,
             "shapes-rec/n": 500.0, "shapes-rec/n_attribute": 350.0, "shapes-pope/f1": 0.5 - 0.01 * seed,
             "shapes-mc/accuracy": 0.25, "shapes-vqa/accuracy": vqa, "shapes-vqa/n": 500.0}
    if rec_blind is not None:
        tasks |= {"shapes-rec/blind/acc_at_0.5": rec_blind, f"shapes-rec/blind/{ATTRIBUTE_REC.split('/')[1]}": rec_blind}
    speed = 2.0 if projector == "deco" else 1.0
    loss = {"pretrain": [(s, 3.0 - speed * s / 10) for s in range(2, 22, 2)],
            "finetune": [(s, 2.0 - speed * s / 50 - 0.01 * seed) for s in range(5, 55, 5)]}
    name = f"{projector}-{tokens if projector != 'mlp' else 'all'}"
    return {"projector": projector, "seed": seed, "name": f"{name}-s{seed}", "config": name,
            "visual_tokens": tokens if projector != "mlp" else 144, "projector_params": PARAMS[projector],
            "trainable_params": {"pretrain": 900_000, "finetune": 900_000},
            "wall_s": {"pretrain": 60.0, "finetune": 120.0, "evaluate": 30.0, "analyze": 5.0},
            "step_s": {"pretrain": 0.2 + 0.01 * seed, "finetune": 0.5 + 0.01 * seed}, "loss": loss,
            "final_loss": {s: loss[s][-1][1] for s in loss},
            "groups": {"mllm_benchmarks": (tasks["shapes-pope/f1"] + 0.25) / 2, "localization": rec,
                       "open-ended_vqa": vqa},
            "tasks": tasks, "locality": {"mass_lift": 2.0 + seed + (0.5 if projector == "deco" else 0.0),
                                         "pointing_hit_rate": 0.5}}


def _summary(seeds: tuple[int, ...] = (0, 1, 2), **kw: Any) -> dict[str, Any]:
    rc = load_reproduce_config(FULL_CONFIG)
    rc.projectors, rc.seeds = ["deco", "qformer", "resampler"], list(seeds)
    runs = [_run(p, s, **kw) for p in ("deco", "qformer", "resampler", "mlp") for s in seeds]
    shared = {"pretrain": [("/d/pretrain", 1.0)], "finetune": [("/d/finetune", 1.0)], "eval": {},
              "samples": {"pretrain_samples": 4000, "finetune_samples": 8000},
              "default_steps": {"pretrain": 300, "finetune": 900}}
    return json.loads(json.dumps(summarise(rc, runs, [], shared, 1234.0)))  # as read back from reproduce.json


def _claims(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return summary["comparisons"]["16"]["claims"]


def test_t_interval_matches_a_hand_computation() -> None:
    """[1, 2, 3]: mean 2, s = 1, t(0.975, 2) = 4.3027 -> half-width 4.3027 / sqrt(3) = 2.484."""
    s = stats([1, 2, 3])
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    assert s["ci95"] == pytest.approx(2.484, abs=5e-4)
    assert (s["low"], s["high"]) == pytest.approx((2 - s["ci95"], 2 + s["ci95"]))
    for df, t in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):  # printed t tables
        assert t_critical(df) == pytest.approx(t, abs=5e-4)
    two = stats([0.30, 0.34])  # n = 2: 12.706 * 0.02828 / sqrt(2) = 0.2541
    assert two["ci95"] == pytest.approx(0.2541, abs=1e-4)


def test_one_seed_has_no_interval_and_no_verdict() -> None:
    s = stats([0.4])
    assert s["ci95"] == NO_INTERVAL and "low" not in s and "high" not in s
    assert verdict(s) == UNDECIDED
    summary = _summary(seeds=(0,))
    check_complete(summary["configs"])  # the undefined interval is stated, not left blank
    md = reproduce_markdown(summary)
    assert "(n=1, no interval)" in md and "± 0.0" not in md
    assert _claims(summary)["Localization: attribute REC (primary)"]["vs"]["qformer-16"]["verdict"] == UNDECIDED


def test_the_three_verdicts_read_the_interval_against_the_claimed_side() -> None:
    assert verdict(stats([0.2, 0.21, 0.19])) == HOLDS
    assert verdict(stats([-0.2, -0.21, -0.19])) == FAILS
    assert verdict(stats([-0.1, 0.2, 0.05])) == NOISE
    assert verdict(stats([0.0, 0.0])) == NOISE  # [0, 0] contains 0
    assert verdict(stats([-30.0, -32.0, -28.0]), side=-1) == HOLDS  # fewer steps claimed: negative holds
    assert verdict(stats([30.0, 32.0, 28.0]), side=-1) == FAILS


def test_deltas_are_paired_by_seed() -> None:
    """Per-seed deltas remove the seed effect both projectors share: the paired interval excludes 0 while the
    per-config intervals overlap; seeds are matched by value, whatever the order, and unmatched seeds dropped."""
    claim = next(c for c in CLAIMS if c.score == f"task/{ATTRIBUTE_REC}")
    deco = {s: _run("deco", s) for s in (2, 0, 1)}
    qformer = {s: _run("qformer", s) for s in (0, 1, 2)}
    delta = paired_delta(deco, [qformer], claim, {})
    assert delta["seeds"] == [0, 1, 2]
    assert delta["values"] == pytest.approx([0.20, 0.21, 0.18])
    assert delta["verdict"] == HOLDS
    d, q = (stats([r["tasks"][ATTRIBUTE_REC] for r in side.values()]) for side in (deco, qformer))
    assert d["low"] < q["high"]  # unpaired, the two configs' intervals overlap
    resampler = {s: _run("resampler", s) for s in (0, 1)}
    both = paired_delta(deco, [qformer, resampler], claim, {})  # DeCo minus the compressive mean, seeds 0 and 1
    assert both["seeds"] == [0, 1] and both["values"] == pytest.approx([0.19, 0.215])


def test_summary_adds_intervals_and_verdicts_beside_the_old_fields() -> None:
    summary = _summary()
    check_complete({k: summary[k] for k in ("thresholds", "configs", "runs", "comparisons")})
    deco = summary["configs"]["deco-16"]
    assert deco["seeds"] == [0, 1, 2] and isinstance(deco["groups"]["localization"]["mean"], float)
    assert deco["groups"]["localization"]["n"] == 3 and isinstance(deco["groups"]["localization"]["ci95"], float)
    assert set(deco["tasks"]) >= {ATTRIBUTE_REC, "shapes-rec/acc_at_0.5", "shapes-vqa/accuracy"}
    assert "shapes-rec/n" not in deco["tasks"] and "shapes-rec/n_attribute" not in deco["tasks"]
    assert summary["runs"][0]["tasks"]["shapes-rec/n"] == 500.0
    claims = _claims(summary)
    assert summary["comparisons"]["16"]["baselines"] == ["qformer-16", "resampler-16"]
    assert claims["Localization: attribute REC (primary)"]["vs"]["compressive mean"]["verdict"] == HOLDS
    assert claims["Localization: overall REC"]["vs"]["qformer-16"]["verdict"] == NOISE
    assert claims["Open-ended VQA"]["vs"]["compressive mean"]["verdict"] == FAILS
    assert claims["Fewer projector parameters"]["vs"]["qformer-16"] == {"delta": -531_712.0, "verdict": HOLDS}
    assert claims["Faster convergence (finetune)"]["vs"]["resampler-16"]["verdict"] == HOLDS
    assert claims["R-GAE locality (mass lift)"]["vs"]["qformer-16"]["verdict"] == HOLDS
    assert "not_testable" in claims["MLLM benchmarks"]  # POPE/MC at chance in every run


def test_a_score_no_config_lifts_above_its_blind_baseline_is_not_testable() -> None:
    runs = [_run(p, s, rec_blind=0.9) for p in ("deco", "qformer") for s in (0, 1, 2)]
    claims = compare(runs, "deco-16", ["qformer-16"], {"pretrain": 2.0, "finetune": 1.5})
    assert "not_testable" in claims["Localization: overall REC"]
    assert "not_testable" in claims["Localization: attribute REC (primary)"]
    assert "vs" in claims["Open-ended VQA"]
    for run in runs:  # no baseline recorded: the floor is 0, as before blind baselines existed
        run["tasks"] = {k: v for k, v in run["tasks"].items() if "/blind/" not in k}
    assert "vs" in compare(runs, "deco-16", ["qformer-16"], {"pretrain": 2.0, "finetune": 1.5})["Localization: overall REC"]
    for run in runs:
        run["groups"]["localization"] = 0.0
    assert "not_testable" in compare(runs, "deco-16", ["qformer-16"], {"pretrain": 2.0, "finetune": 1.5})[
        "Localization: overall REC"]


def test_markdown_shows_intervals_and_the_verdict_table() -> None:
    md = reproduce_markdown(_summary())
    assert "## Scores (mean ± 95 % interval over seeds)" in md
    assert "Attribute REC, primary (points)" in md and "### Task metrics" in md
    assert "| claim | `qformer-16` | `resampler-16` | compressive mean |" in md
    row = next(line for line in md.splitlines() if line.startswith("| Localization: attribute REC (primary)"))
    assert row.endswith("(n=3): holds |") and "[+" in row
    assert "| MLLM benchmarks | not testable" in md
    assert "| chance |" in md and "| blind (blank image, mean over runs) |" in md
    cells = [c.strip() for line in md.splitlines() if line.startswith("| ") for c in line.strip("|").split("|")]
    assert all(c and c not in ("nan", "None") for c in cells)


def test_full_grid_is_five_projectors_at_16_tokens_three_seeds_plus_mlp() -> None:
    rc = load_reproduce_config(FULL_CONFIG)
    runs = grid(rc)
    assert (rc.tokens, rc.seeds, rc.eval_samples) == ([16], [0, 1, 2], 500)
    assert len(runs) == 18
    assert {r.projector for r in runs} == {"deco", "deco_max", "qformer", "resampler", "c-abstractor", "mlp"}
    assert {r.config_name for r in runs if r.projector == "mlp"} == {"mlp-all"}


def test_the_committed_summary_renders_with_intervals_as_the_readme_shows() -> None:
    summary = json.loads((ROOT / DOCS / "reproduce.json").read_text())
    assert "comparisons" in summary
    md = reproduce_markdown(summary)
    assert "## Scores (mean ± 95 % interval over seeds)" in md and "seed std ≤" not in md
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- results:reproduce -->", "<!-- /results:reproduce -->"
    block = readme[readme.index(begin) + len(begin):readme.index(end)]
    assert block.strip() == render_block("reproduce", ROOT / DOCS).strip()


def _without_intervals(node: Any) -> Any:
    """A summary as published before intervals: no ci95/low/high beside the statistics, no paired comparisons."""
    if isinstance(node, dict):
        return {k: _without_intervals(v) for k, v in node.items()
                if k not in ("ci95", "low", "high", "comparisons", "statistics")}
    if isinstance(node, list):
        return [_without_intervals(v) for v in node]
    return node


def test_a_summary_published_before_intervals_renders_with_the_seed_spread() -> None:
    legacy = _without_intervals(json.loads((ROOT / DOCS / "reproduce.json").read_text()))
    md = reproduce_markdown(legacy)
    assert "## Scores (mean ± sample std over seeds)" in md and "seed std ≤" in md
    assert "95 %" not in md.split("## Definitions")[0]
