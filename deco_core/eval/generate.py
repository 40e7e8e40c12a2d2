"""Batch inference for evaluation: left-padded greedy generation, in-process or on a Ray Data actor pool.

`generate_local` runs one process over raw shard records (tests, analysis); `run_generation_tasks` streams the
shards of all tasks through `ray.data.read_webdataset` into one pool of `GenerationActor`s (each loads the model
once) and writes one parquet row per question (OUTPUT_COLUMNS). A record that cannot be decoded is not dropped:
it gets an empty prediction, score 0 and its error reason.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deco_core.config import EvalConfig
from deco_core.data.conversation import SampleError, Segment, prompt_text, tokenize_segments
from deco_core.data.preprocess import decode_record
from deco_core.data.storage import StorageConfig, get_filesystem, local_copy, pyarrow_filesystem
from deco_core.data.transforms import ImageTransform
from deco_core.eval.tasks import Task, get_task

logger = logging.getLogger(__name__)

TASK_COLUMN = "__task__"
OUTPUT_COLUMNS = ("question_id", "task", "key", "shard", "prompt", "prediction", "references", "score", "error",
                  "blind_prediction", "blind_score")
# The blind baseline answers each question shown a blank image: all zeros after normalisation, i.e. the image
# processor's mean colour everywhere. It depends on nothing but the question, so blind scores do not change with
# batch size, actor count or block order (pairing questions with other questions' images within a batch did).


@dataclass
class Question:
    """One decoded eval record, ready to batch."""

    key: str
    shard: str
    question_id: str
    prompt: str  # the user turn, with <image>
    references: dict[str, Any]
    pixels: np.ndarray | None  # [3, S, S] float32; None when the record failed to decode
    error: str = ""


def load_model(model_uri: str, storage: StorageConfig | None = None, device: str = "cpu"):
    """DecoModel from a local directory, or from s3:// after copying it to a temporary directory.

    On a CUDA device the model is cast to bf16 (LLaVA evaluates in half precision); on CPU it stays fp32.
    """
    from deco_core.model.deco import DecoModel

    with local_copy(model_uri, storage, prefix="deco-eval-model-") as path:
        model = DecoModel.from_pretrained(path)
    if device.startswith("cuda"):
        model = model.to(device=device, dtype=torch.bfloat16)
    return model.eval()


def decode_question(record: dict[str, Any], task: Task, transform: ImageTransform) -> Question:
    """Raw shard record -> Question; a bad record becomes a Question with `error` set (never raises)."""
    key = str(record.get("__key__", "?"))
    shard = os.path.basename(str(record.get("__url__") or ""))
    try:
        key, meta, image = decode_record(record)
        if image is None:
            raise SampleError("missing_image", f"sample {key}: eval samples need an image")
        qid = str(meta.get("question_id") or meta.get("id") or key)
        return Question(key, shard, qid, task.build_prompt(meta), task.references(meta), transform(image))
    except (SampleError, ValueError, KeyError, TypeError) as exc:
        reason = exc.reason if isinstance(exc, SampleError) else type(exc).__name__
        logger.warning("eval %s: sample %s cannot be used (%s): %s", task.name, key, reason, exc)
        return Question(key, shard, key, "", {}, None, error=reason)


def encode_prompts(model, prompts: list[str], has_image: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """User turns -> LEFT-padded input_ids [B, T] and attention_mask [B, T] (0 on pads), vicuna_v1 template;
    ``has_image=False`` for text-only turns (no ``<image>`` in them)."""
    tok = model.tokenizer
    max_length = int(getattr(model.llm.config, "max_position_embeddings", 4096))
    seqs = [tokenize_segments([Segment(prompt_text(p, model.cfg.chat_template), learn=False)], tok, model.image_token_id,
                              model.num_image_tokens, max_length, has_image=has_image).input_ids for p in prompts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)  # [B, T]
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [B, T]
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def decode_new_tokens(model, new_ids: torch.Tensor) -> list[str]:
    """New token ids [B, N] -> stripped strings, cut at the first EOS."""
    eos = model.tokenizer.eos_token_id
    out = []
    for row in new_ids.tolist():
        if eos in row:
            row = row[: row.index(eos)]
        out.append(model.tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


@torch.no_grad()
def generate_answers(model, prompts: list[str], pixels: list[np.ndarray], max_new_tokens: int) -> list[str]:
    """Greedy answers for one batch of (user turn, image [3, S, S]) pairs."""
    device = next(model.parameters()).device
    ids, mask = encode_prompts(model, prompts)
    pixel_values = torch.as_tensor(np.stack(pixels)).to(device)  # [B, 3, S, S]
    image_mask = torch.ones(len(prompts), dtype=torch.bool, device=device)  # [B]
    ids, mask = ids.to(device), mask.to(device)
    new_ids = model.generate(ids, mask, pixel_values, image_mask, max_new_tokens=max_new_tokens)
    return decode_new_tokens(model, new_ids)


def answer_questions(model, task: Task, questions: list[Question], max_new_tokens: int,
                     blind: bool = False) -> list[dict[str, Any]]:
    """Generate and score one batch of questions; failed records get an empty prediction and score 0.

    With ``blind`` every question is also answered shown a blank image: the blind baseline, i.e. what the model
    scores from the text alone (``blind_prediction`` / ``blind_score``).
    """
    good = [q for q in questions if not q.error]
    prompts, pixels = [q.prompt for q in good], [q.pixels for q in good]
    answers = generate_answers(model, prompts, pixels, max_new_tokens) if good else []
    blank = [np.zeros_like(p) for p in pixels]  # [3, S, S] each
    blind_answers = generate_answers(model, prompts, blank, max_new_tokens) if blind and good else []
    by_id = {id(q): a for q, a in zip(good, answers, strict=True)}
    blind_by_id = {id(q): a for q, a in zip(good, blind_answers, strict=False)}
    rows = []
    for q in questions:
        pred = by_id.get(id(q), "")
        score = task.score_one(pred, q.references) if not q.error else 0.0
        blind_pred = blind_by_id.get(id(q))
        blind_score = task.score_one(blind_pred, q.references) if blind_pred is not None else float("nan")
        rows.append({"question_id": q.question_id, "task": task.name, "key": q.key, "shard": q.shard,
                     "prompt": q.prompt, "prediction": pred, "references": json.dumps(q.references),
                     "score": float(score), "error": q.error, "blind_prediction": blind_pred or "",
                     "blind_score": float(blind_score)})
    return rows


def effective_max_new_tokens(task: Task, cfg_max: int | None) -> int:
    """The task's budget, capped by the config's global `eval.max_new_tokens`."""
    return min(task.max_new_tokens, cfg_max) if cfg_max else task.max_new_tokens


def generate_local(model, records: Iterable[dict[str, Any]], task: Task | str, batch_size: int = 16,
                   max_new_tokens: int | None = None) -> list[dict[str, Any]]:
    """Single-process batched generation over raw records (``shards.iter_samples`` output); returns rows."""
    task = get_task(task) if isinstance(task, str) else task
    transform = ImageTransform.from_vision_config(model.cfg.vision)
    budget = effective_max_new_tokens(task, max_new_tokens)
    rows: list[dict[str, Any]] = []
    batch: list[Question] = []
    for record in records:
        batch.append(decode_question(record, task, transform))
        if len(batch) == batch_size:
            rows += answer_questions(model, task, batch, budget)
            batch = []
    if batch:
        rows += answer_questions(model, task, batch, budget)
    return rows


class GenerationActor:
    """Ray Data callable class: loads the model once, then turns batches of raw records into answer rows.

    Rows carry their task in a `__task__` column (several tasks share one actor pool, so the model is loaded
    once per actor for the whole evaluation); without that column every row belongs to `task_name`.
    """

    def __init__(self, model_uri: str, task_name: str | None = None, max_new_tokens: int | None = None,
                 storage: StorageConfig | None = None, num_threads: int = 1, blind: bool = False) -> None:
        torch.set_num_threads(max(1, num_threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU only when the actor was given one
        self.model = load_model(model_uri, storage, device)
        self.task_name = task_name
        self.transform = ImageTransform.from_vision_config(self.model.cfg.vision)
        self.max_new_tokens = max_new_tokens
        self.blind = blind

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["__key__"])
        records = [{k: v[i] for k, v in batch.items()} for i in range(n)]
        by_task: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_task.setdefault(str(r.get(TASK_COLUMN) or self.task_name), []).append(r)
        rows: list[dict[str, Any]] = []
        for name, group in by_task.items():
            task = get_task(name)
            questions = [decode_question(r, task, self.transform) for r in group]
            rows += answer_questions(self.model, task, questions,
                                     effective_max_new_tokens(task, self.max_new_tokens), self.blind)
        out = {c: np.array([r[c] for r in rows], dtype=object) for c in OUTPUT_COLUMNS if not c.endswith("score")}
        out.update({c: np.array([r[c] for r in rows], dtype=np.float64) for c in ("score", "blind_score")})
        return out


def _tagged_source(task: str, data_uri: str, storage: StorageConfig, limit: int | None):
    """The task's raw records with a `__task__` column, and their count (capped by `limit`)."""
    import pyarrow as pa

    from deco_core.data.ray_data import read_source

    counts: Counter = Counter()
    ds, total = read_source(data_uri, storage, counts, num_cpus=0.25, shuffle=False)
    if counts.get("truncated_shard"):
        logger.warning("eval %s: %d questions in unreadable shards are left out", task, counts["truncated_shard"])
    if limit:
        ds, total = ds.limit(limit), min(total, limit)
    ds = ds.map_batches(lambda t: t.append_column(TASK_COLUMN, pa.array([task] * t.num_rows, pa.string())),
                        batch_format="pyarrow", num_cpus=0.25)
    return ds, total


def run_generation_tasks(model_uri: str, data_uris: Mapping[str, str], out_uri: str, cfg: EvalConfig,
                         storage: StorageConfig | None = None, num_gpus: float = 0.0) -> dict[str, int]:
    """Stream every task's shards through ONE pool of `cfg.num_actors` GenerationActors into parquet at `out_uri`.

    Resource plan: reads take 0.25 CPU each and every actor `cfg.cpus_per_actor` (fractional values are fine,
    e.g. 1.0 per actor on a local Ray started with 4 logical CPUs); Ray streams blocks, so memory stays bounded
    by a few batches per actor whatever the size of the set. `cfg.limit` caps the questions of each task.
    `num_gpus` > 0 gives each actor a GPU share (bf16 generation there). Existing output is overwritten.
    Returns {task: number of questions sent}.
    """
    from ray.data import SaveMode

    storage = storage or StorageConfig()
    for task in data_uris:
        get_task(task)  # fail fast on a bad name, before starting any Ray work
    parts = {task: _tagged_source(task, uri, storage, cfg.limit) for task, uri in data_uris.items()}
    datasets = [ds for ds, _ in parts.values()]
    ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    from ray.data import ActorPoolStrategy

    ds = ds.map_batches(
        GenerationActor,
        fn_constructor_kwargs={"model_uri": model_uri, "max_new_tokens": cfg.max_new_tokens, "storage": storage,
                               "num_threads": max(1, int(cfg.cpus_per_actor)), "blind": cfg.blind_baseline},
        batch_size=cfg.batch_size, compute=ActorPoolStrategy(size=cfg.num_actors), num_cpus=cfg.cpus_per_actor,
        num_gpus=num_gpus or None,
    )
    fs = pyarrow_filesystem(out_uri, storage)
    target = get_filesystem(out_uri, storage)[1] if fs is None else out_uri.split("://", 1)[1]
    totals = {task: n for task, (_, n) in parts.items()}
    logger.info("eval: generating answers %s with %d actor(s) into %s", totals, cfg.num_actors, out_uri)
    ds.write_parquet(target, filesystem=fs, mode=SaveMode.OVERWRITE)
    return totals


def run_generation(model_uri: str, task: str, data_uri: str, out_uri: str, cfg: EvalConfig,
                   storage: StorageConfig | None = None, num_gpus: float = 0.0) -> str:
    """One task's answers as parquet at `out_uri` (see `run_generation_tasks`); returns `out_uri`."""
    run_generation_tasks(model_uri, {task: data_uri}, out_uri, cfg, storage, num_gpus)
    return out_uri
