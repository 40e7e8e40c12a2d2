"""A reproduce summary published before intervals (no ``comparisons``, like the committed
docs/results/reproduce.json) still renders its claims as it did: a margin only counts beyond the seed spread,
localization must lead the other groups, parameters and steps-to-loss compare DeCo with the compressive projectors
at the same M. The interval-based verdicts are tested in test_reproduce_stats.py."""

from __future__ import annotations

from typing import Any

from pipelines.experiments.reproduce.report import deco_deltas
from pipelines.experiments.reproduce.stats import stats
from pipelines.experiments.reproduce.tables import spread_claims_section, spread_verdict


def _config(projector: str, m: int, params: int, mllm: list[float], loc: list[float], vqa: list[float],
            lift: list[float], ft_steps: list[int]) -> dict[str, Any]:
    steps = {"pretrain": {**stats([10.0, 10.0]), "reached": 2, "runs": 2},
             "finetune": {**stats([float(s) for s in ft_steps]), "reached": len(ft_steps), "runs": 2}}
    return {"projector": projector, "visual_tokens": m, "projector_params": params,
            "groups": {"mllm_benchmarks": stats(mllm), "localization": stats(loc), "open-ended_vqa": stats(vqa)},
            "locality": {"mass_lift": stats(lift), "pointing_hit_rate": stats([0.2, 0.2])},
            "steps_to_loss": steps}


def _summary(localization_learned: bool = True) -> dict[str, Any]:
    """Aggregates of a small grid and their DeCo-minus-compressive deltas (as ``summarise`` builds them)."""
    configs = {
        "deco-16": _config("deco", 16, 25_000, [0.40, 0.42], [0.30, 0.32], [0.50, 0.50], [3.0, 3.2], [100, 110]),
        "qformer-16": _config("qformer", 16, 550_000, [0.40, 0.44], [0.10, 0.12], [0.49, 0.51], [1.0, 1.2], [150, 160]),
        "resampler-16": _config("resampler", 16, 400_000, [0.40, 0.40], [0.12, 0.10], [0.50, 0.48], [1.1, 1.0],
                                [140, 150]),
        "deco-36": _config("deco", 36, 25_000, [0.30, 0.50], [0.10, 0.10], [0.40, 0.40], [1.0, 1.0], [100, 300]),
        "qformer-36": _config("qformer", 36, 550_000, [0.40, 0.40], [0.20, 0.20], [0.50, 0.50], [1.0, 1.0], [100, 100]),
        "mlp-all": _config("mlp", 144, 25_000, [0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [2.0, 2.0], [90, 90]),
    }
    if not localization_learned:
        for config in configs.values():
            config["groups"]["localization"] = stats([0.0, 0.0])
    return {"configs": configs, "deltas": deco_deltas(configs)}


def _rows(md: list[str]) -> dict[str, list[str]]:
    table = [line for line in md if line.startswith("| ") and not line.startswith("| claim")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table)}


def test_verdict_needs_a_margin_beyond_the_seed_spread() -> None:
    assert spread_verdict(2.0, 1.0) == "holds"
    assert spread_verdict(-2.0, 1.0) == "does not hold"
    assert spread_verdict(0.5, 1.0) == "within seed spread"
    assert spread_verdict(0.0, 0.0) == "tie"


def test_claims_per_m_against_the_compressive_projectors_only() -> None:
    md = "\n".join(spread_claims_section(_summary())).splitlines()
    assert md[0] == "## The paper's claims, as measured here"
    assert "| claim | M = 16 | M = 36 |" in md  # mlp (M = 144) has no compressive peer: no column
    rows = _rows(md)
    m16, m36 = (dict(zip(rows, col, strict=True)) for col in zip(*rows.values(), strict=True))
    assert m16["DeCo ≥ compressive: Visual localization"] == "+20.0 pts (seed std ≤ 1.4): holds"
    assert m16["DeCo ≥ compressive: MLLM benchmarks"].endswith("within seed spread")
    assert m16["largest margin on localization"].endswith(": holds")
    assert m16["fewer projector parameters"] == "25,000 vs 400,000 (resampler, the smallest): holds"
    assert m16["faster convergence (finetune)"] == "105 vs 150 steps to the loss threshold (seed std ≤ 7): holds"
    assert m36["DeCo ≥ compressive: Visual localization"] == "-10.0 pts (seed std ≤ 0.0): does not hold"
    assert m36["largest margin on localization"].endswith("does not hold")
    assert m36["faster convergence (finetune)"].endswith("within seed spread")  # 200 ± 141 vs 100


def test_a_group_no_run_learned_is_reported_untestable_not_won() -> None:
    rows = _rows("\n".join(spread_claims_section(_summary(localization_learned=False))).splitlines())
    assert rows["DeCo ≥ compressive: Visual localization"] == ["not testable: every run scores 0"] * 2
    assert rows["largest margin on localization"] == ["not testable: every run scores 0 on localization"] * 2
    assert rows["DeCo ≥ compressive: MLLM benchmarks"][0].endswith("within seed spread")


def test_no_claims_section_without_both_sides() -> None:
    summary = _summary()
    summary["configs"] = {k: v for k, v in summary["configs"].items() if not k.startswith("deco")}
    assert spread_claims_section(summary) == []
