"""The workflow summary, ``<root>/workflow/summary.json``, written at the end of every ``deco pipeline run``:
wall time, per-stage status and seconds, and the evaluate stage's scores, groups and baselines (blind and
chance). ``make results`` publishes the tiny workflow's summary as ``docs/results/tiny.json``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from deco_core.data.storage import get_filesystem, join_uri

log = logging.getLogger(__name__)


def build_summary(cfg, reports, wall_s: float, started_at: float) -> dict[str, Any]:
    """The summary dict of one workflow run (``reports``: the StageReports in run order)."""
    summary: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M", time.localtime(started_at)),
        "pipeline": cfg.pipeline.name, "projector": cfg.model.projector.name,
        "visual_tokens": cfg.model.projector.num_tokens, "wall_s": round(wall_s, 1),
        "stages": {r.name: {"status": r.status, "wall_s": round(r.seconds, 1)} for r in reports},
    }
    evaluate = next((r for r in reports if r.name == "evaluate"), None)
    scores_uri = (evaluate.outputs or {}).get("scores") if evaluate else None
    if scores_uri:
        fs, path = get_filesystem(scores_uri, cfg.data.storage)
        with fs.open(path, "r") as f:
            scores = json.load(f)
        summary["scores"] = {task: {k: v for k, v in s.items() if not k.startswith("blind/")}
                             for task, s in scores["tasks"].items()}
        summary["groups"] = scores["groups"]
        summary["baselines"] = scores.get("baselines", {})
    return summary


def write_summary(cfg, reports, wall_s: float, started_at: float) -> str:
    """Write ``<root>/workflow/summary.json`` (atomically) and return its URI."""
    uri = join_uri(cfg.pipeline.root, "workflow", "summary.json")
    fs, path = get_filesystem(uri, cfg.data.storage)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path + ".tmp", "w") as f:
        json.dump(build_summary(cfg, reports, wall_s, started_at), f, indent=2)
    fs.mv(path + ".tmp", path)
    log.debug("wrote the workflow summary to %s", uri)
    return uri


def tiny_markdown(summary: dict[str, Any]) -> str:
    """The README block of a workflow summary: stage times, then each task's scores beside its baselines."""
    from deco_core.eval.tasks import get_task

    stages = [[name, s["status"], s["wall_s"]] for name, s in summary["stages"].items()]
    lines = ["# Latest measured `make run`", "",
             f"Measured {summary['measured_at']}: `{summary['projector']}` projector, {summary['visual_tokens']} "
             f"visual tokens; the whole run took **{fmt(summary['wall_s'], 0)} s** (Ray start included).", "",
             markdown_table(["stage", "status", "seconds"], stages), ""]
    scores, baselines = summary.get("scores", {}), summary.get("baselines", {})
    if scores:
        rows = []
        for task, s in scores.items():
            t, base = get_task(task), baselines.get(task, {})
            extra = ", ".join(f"{k} {fmt(v)}" for k, v in s.items()
                              if k.startswith("acc_at_0.5_") or k in ("accuracy", "f1", "mean_iou"))
            rows.append([task, t.primary, s[t.primary], "—" if base.get("blind") is None else base["blind"],
                         "—" if base.get("chance") is None else base["chance"], int(s["n"]), extra])
        lines += ["Scores on the frozen eval set; blind = the same model shown a blank image; "
                  "chance = uniform guessing over a closed answer set.", "",
                  markdown_table(["task", "primary", "score", "blind", "chance", "questions", "also"], rows), ""]
    return "\n".join(lines) + "\n"


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: integers with thousands separators, floats to `digits` significant decimals."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** -digits):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are formatted with ``fmt`` unless already strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"markdown_table: row has {len(row)} cells, header has {len(header)}")
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines)
