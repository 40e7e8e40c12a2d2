"""Scoring a model on the ShapesWorld eval tasks with the scene written as text (no image): what the foundation
stage's LLM has learned before any visual token reaches it. Same questions, prompts, generation budget and
scorers as the image eval (``deco_core.eval.tasks``), the image replaced by ``deco_core.data.scene_text``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from deco_core.data.scene_text import textualise
from deco_core.data.shapes import SHAPES_GENERATORS
from deco_core.data.shapes_config import ShapesConfig
from deco_core.eval.generate import decode_new_tokens, effective_max_new_tokens, encode_prompts
from deco_core.eval.tasks import get_task

log = logging.getLogger(__name__)

TEXT_TASKS = ("shapes-vqa", "shapes-pope", "shapes-mc", "shapes-rec")


def text_questions(task_name: str, n: int, seed: int, shapes: ShapesConfig) -> list[tuple[str, dict[str, Any]]]:
    """(user turn with the scene as text, references) for the first ``n`` val questions of a ShapesWorld task."""
    task = get_task(task_name)
    if task.shapes_stream is None:
        raise ValueError(f"task {task_name}: not a ShapesWorld task (valid: {', '.join(TEXT_TASKS)})")
    out = []
    for sample in SHAPES_GENERATORS[task.shapes_stream][0](n, seed=seed, split="val", config=shapes):
        record = dict(sample["json"])
        record["conversations"] = [{"from": "human", "value": task.build_prompt(record)}]
        text = textualise({**sample, "json": record}, shapes.coord_step_hundredths)["json"]
        out.append((text["conversations"][0]["value"], task.references(sample["json"])))
    return out


@torch.no_grad()
def score_scene_text(model, n: int, seed: int, shapes: ShapesConfig, tasks: Sequence[str] = TEXT_TASKS,
                     batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Greedy answers to ``n`` text questions per task -> {task: the task's metrics (incl. ``n``)}."""
    model.eval()
    scores: dict[str, dict[str, float]] = {}
    for name in tasks:
        task = get_task(name)
        budget = effective_max_new_tokens(task, None)
        questions = text_questions(name, n, seed, shapes)
        rows = []
        for start in range(0, len(questions), batch_size):
            batch = questions[start:start + batch_size]
            ids, mask = encode_prompts(model, [q for q, _ in batch], has_image=False)
            new = model.generate(ids, mask, None, max_new_tokens=budget)
            rows += [{"prediction": p, "references": r} for p, (_, r) in zip(decode_new_tokens(model, new), batch,
                                                                              strict=True)]
        scores[name] = task.score(rows)
        log.info("scene-as-text %s: %s", name, {k: round(v, 3) for k, v in scores[name].items()})
    return scores
