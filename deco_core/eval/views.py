"""The evaluation as MLflow shows it: the score chart as a figure (``log_figure``), and the scores and the
per-question answers as tables (``log_table``, browsable in the run's artifact view), on the evaluation's run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from deco_core.eval.report import Baselines, score_figure

# artifact file of each view on the run
FIGURE_FILE = "eval/scores_chart.png"
SCORES_TABLE = "eval/scores_table.json"
ANSWERS_TABLE = "eval/answers_table.json"
ANSWER_COLUMNS = ("question_id", "task", "prediction", "score", "blind_prediction", "blind_score")


def scores_table(task_scores: Mapping[str, Mapping[str, float]], primaries: Mapping[str, str],
                 baselines: Baselines) -> dict[str, list[Any]]:
    """One row per task: its primary metric, the model's score, the blind and chance baselines, question count."""
    tasks = list(task_scores)
    return {
        "task": tasks,
        "metric": [primaries[t] for t in tasks],
        "score": [float(task_scores[t][primaries[t]]) for t in tasks],
        "blind": [baselines.get(t, {}).get("blind") for t in tasks],
        "chance": [baselines.get(t, {}).get("chance") for t in tasks],
        "questions": [int(task_scores[t].get("n", 0)) for t in tasks],
    }


def log_views(client: Any, run_id: str, task_scores: Mapping[str, Mapping[str, float]],
              primaries: Mapping[str, str], baselines: Baselines, rows: Sequence[Mapping[str, Any]]) -> None:
    """Log the chart, the scores table and the answers table to ``run_id`` through ``client`` (an MlflowClient)."""
    client.log_figure(run_id, score_figure(task_scores, primaries, baselines), FIGURE_FILE)
    client.log_table(run_id, scores_table(task_scores, primaries, baselines), SCORES_TABLE)
    columns = [c for c in ANSWER_COLUMNS if any(c in r for r in rows)]
    client.log_table(run_id, {c: [r.get(c) for r in rows] for c in columns}, ANSWERS_TABLE)
