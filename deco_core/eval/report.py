"""The evaluation report: per-task and per-group score tables, a bar chart and the worst cases with images.

`write_report` writes report.md and report.html, scores.png (matplotlib, Agg canvas) and one PNG per worst case
under images/, all in one folder, so the folder can be logged to MLflow as a single artifact directory.
"""

from __future__ import annotations

import html
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)
_COUNTS = ("n", "n_errors")  # metrics that are counts, shown as integers


@dataclass
class WorstCase:
    """One low-scoring prediction shown in the report."""

    task: str
    question_id: str
    prompt: str
    prediction: str
    references: dict[str, Any]
    score: float
    image_png: bytes | None = None  # the sample's image as PNG/JPEG bytes, when it could be found
    error: str = ""
    image_file: str = field(default="", init=False)  # set by write_report (relative to the report folder)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


Baselines = Mapping[str, Mapping[str, float | None]]  # task -> {"blind": score, "chance": score}; None = n/a


def plot_scores(task_scores: Mapping[str, Mapping[str, float]], primaries: Mapping[str, str], path: Path,
                baselines: Baselines | None = None) -> Path:
    """``score_figure`` written as PNG to ``path``."""
    score_figure(task_scores, primaries, baselines).savefig(path, format="png")
    return path


def score_figure(task_scores: Mapping[str, Mapping[str, float]], primaries: Mapping[str, str],
                 baselines: Baselines | None = None):
    """Bar chart of each task's primary metric beside its blind baseline (same model, a blank image for every
    question) and a chance mark, on the Agg canvas (no global backend state); returns the Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(task_scores)
    baselines = baselines or {}
    values = [float(task_scores[n][primaries[n]]) for n in names]
    blind = [baselines.get(n, {}).get("blind") for n in names]
    fig = Figure(figsize=(max(4.0, 1.3 * len(names) + 1.5), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.4 if any(b is not None for b in blind) else 0.8
    bars = ax.bar([i - (width / 2 if width < 0.8 else 0) for i in range(len(names))], values, width,
                  color="#4C72B0", label="model")
    ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=7)
    if width < 0.8:
        shown = [(i, b) for i, b in enumerate(blind) if b is not None]
        blind_bars = ax.bar([i + width / 2 for i, _ in shown], [b for _, b in shown], width, color="#BBBBBB",
                            hatch="//", label="blind (blank image)")
        ax.bar_label(blind_bars, labels=[_fmt(b) for _, b in shown], fontsize=7)
    for i, n in enumerate(names):
        chance = baselines.get(n, {}).get("chance")
        if chance is not None:
            ax.hlines(chance, i - 0.45, i + 0.45, colors="#C44E52", linestyles="--",
                      label="chance" if not ax.get_legend_handles_labels()[1].count("chance") else None)
    ax.set_xticks(range(len(names)), [f"{n}\n({primaries[n]})" for n in names], fontsize=8)
    ax.set_ylabel("score")
    ax.set_ylim(0, max(1.0, max(values, default=0.0) * 1.15))
    if baselines:
        ax.legend(fontsize=7, loc="upper right")
    ax.set_title("Primary metric per task")
    fig.tight_layout()
    return fig


def _save_image(case: WorstCase, folder: Path, index: int) -> None:
    if not case.image_png:
        return
    name = f"{case.task}_{index:02d}.png"
    try:
        Image.open(io.BytesIO(case.image_png)).convert("RGB").save(folder / name, format="PNG")
        case.image_file = f"images/{name}"
    except OSError as exc:
        logger.warning("report: cannot save the image of %s (%s)", case.question_id, exc)


def _score_rows(task_scores: Mapping[str, Mapping[str, float]], groups: Mapping[str, str],
                primaries: Mapping[str, str], baselines: Baselines) -> list[tuple[str, ...]]:
    """(task, group, primary, primary value, blind, chance, all metrics) per task."""
    rows = []
    for name, scores in task_scores.items():
        others = ", ".join(f"{k}={int(v) if k in _COUNTS else _fmt(v)}" for k, v in sorted(scores.items()))
        base = baselines.get(name, {})
        cells = [_fmt(v) if (v := base.get(k)) is not None else "—" for k in ("blind", "chance")]
        rows.append((name, groups[name], primaries[name], _fmt(scores[primaries[name]]), *cells, others))
    return rows


def _markdown(title: str, rows: list, group_scores: Mapping[str, float],
              worst: Mapping[str, Sequence[WorstCase]], header: Mapping[str, str]) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()] + [""]
    lines += ["## Groups", "", "| group | mean primary score |", "|---|---|"]
    lines += [f"| {g} | {_fmt(v)} |" for g, v in group_scores.items()]
    lines += ["", "## Tasks", "", "Blind: the same model shown a blank image. Chance: uniform "
              "guessing over the closed answer set (— for open answers).", "",
              "| task | group | primary | score | blind | chance | all metrics |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += ["", "![scores](scores.png)", "", "## Worst cases", ""]
    for task, cases in worst.items():
        lines += [f"### {task}", ""]
        for c in cases:
            lines.append(f"- `{c.question_id}` score {_fmt(c.score)}" + (f" (error: {c.error})" if c.error else ""))
            if c.image_file:
                lines.append(f"  ![{c.question_id}]({c.image_file})")
            lines.append(f"  - prompt: `{c.prompt.replace(chr(10), ' ⏎ ')}`")
            lines.append(f"  - prediction: `{c.prediction}`")
            lines.append(f"  - references: `{json.dumps(c.references)}`")
        lines.append("")
    return "\n".join(lines)


def _html(title: str, rows: list, group_scores: Mapping[str, float],
          worst: Mapping[str, Sequence[WorstCase]], header: Mapping[str, str]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}img.case{width:160px;image-rendering:pixelated}"
             "code{white-space:pre-wrap}</style></head><body>", f"<h1>{e(title)}</h1><ul>"]
    parts += [f"<li><b>{e(k)}</b>: {e(str(v))}</li>" for k, v in header.items()]
    parts.append("</ul><h2>Groups</h2><table><tr><th>group</th><th>mean primary score</th></tr>")
    parts += [f"<tr><td>{e(g)}</td><td>{_fmt(v)}</td></tr>" for g, v in group_scores.items()]
    parts.append("</table><h2>Tasks</h2><p>Blind: the same model shown a blank image. Chance: "
                 "uniform guessing over the closed answer set (— for open answers).</p><table><tr><th>task</th>"
                 "<th>group</th><th>primary</th><th>score</th><th>blind</th><th>chance</th><th>all metrics</th></tr>")
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
    parts.append("</table><p><img src='scores.png' alt='scores'></p><h2>Worst cases</h2>")
    for task, cases in worst.items():
        parts.append(f"<h3>{e(task)}</h3><table><tr><th>image</th><th>question</th><th>prediction</th>"
                     "<th>references</th><th>score</th></tr>")
        for c in cases:
            img = f"<img class='case' src='{e(c.image_file)}'>" if c.image_file else "—"
            parts.append(f"<tr><td>{img}</td><td><code>{e(c.prompt)}</code><br><small>{e(c.question_id)}</small>"
                         f"</td><td><code>{e(c.prediction)}</code>{'<br>error: ' + e(c.error) if c.error else ''}"
                         f"</td><td><code>{e(json.dumps(c.references))}</code></td><td>{_fmt(c.score)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, task_scores: Mapping[str, Mapping[str, float]],
                 group_scores: Mapping[str, float], groups: Mapping[str, str], primaries: Mapping[str, str],
                 worst: Mapping[str, Sequence[WorstCase]], header: Mapping[str, str] | None = None,
                 title: str = "DeCo evaluation report", baselines: Baselines | None = None) -> dict[str, Path]:
    """Write the report folder; returns {"markdown", "html", "chart"} paths.

    Args:
        task_scores: task -> {metric: value}; groups / primaries: task -> group name / primary metric name.
        group_scores: group -> mean primary score; worst: task -> worst cases (lowest score first).
        header: extra key/value lines (model URI, data URIs, config) shown at the top.
        baselines: task -> {"blind", "chance"} primary scores shown beside the model's (table and chart).
    """
    folder = Path(out_dir)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    baselines = baselines or {}
    chart = plot_scores(task_scores, primaries, folder / "scores.png", baselines)
    for cases in worst.values():
        for i, case in enumerate(cases):
            _save_image(case, folder / "images", i)
    rows = _score_rows(task_scores, groups, primaries, baselines)
    header = dict(header or {})
    md = folder / "report.md"
    md.write_text(_markdown(title, rows, group_scores, worst, header), encoding="utf-8")
    page = folder / "report.html"
    page.write_text(_html(title, rows, group_scores, worst, header), encoding="utf-8")
    logger.info("wrote the eval report to %s", page)
    return {"markdown": md, "html": page, "chart": chart}
