"""The evaluation task registry: what each benchmark asks (prompt), how one answer and a whole set are scored.

A `Task` names its paper group, its scorer (a row of `SCORERS`, built on the pure functions of metrics.py)
and the `primary` metric that feeds the group averages. `TASKS` lists the ShapesWorld tasks (shards built
by `build_shapes_eval_shards` in runner.py) and the public benchmarks converted to shards (URI given by the user).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deco_core.data.prompts import (
    IMAGE_TOKEN,
    MC_SUFFIX,
    MME_ORIGINAL_SUFFIX,
    REC_PROMPT,
    SHORT_ANSWER_SUFFIX,
)
from deco_core.eval import metrics as M

logger = logging.getLogger(__name__)

ROTATION_STRIDE = 1_000_000  # MMBench: index >= 1e6 marks a rotated copy of index % 1e6

GROUPS: tuple[str, ...] = ("MLLM benchmarks", "localization", "open-ended VQA", "captioning")
# Reference fields copied from a sample's json (top level first, then json["meta"]) into each prediction row.
REFERENCE_KEYS: tuple[str, ...] = (
    "answers", "label", "bbox", "choices", "pope_split", "subtask", "category", "l2-category",
    "index", "image", "question_type",
)  # fmt: skip

Rows = Sequence[Mapping[str, Any]]  # each row has "prediction" (str) and "references" (dict or JSON str)


def _refs(row: Mapping[str, Any]) -> dict[str, Any]:
    refs = row["references"]
    return json.loads(refs) if isinstance(refs, str) else dict(refs)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _first_answer(refs: Mapping[str, Any]) -> str:
    answers = refs.get("answers") or ([refs["label"]] if "label" in refs else [])
    if not answers:
        raise ValueError(f"references {dict(refs)} have no 'answers' or 'label'; expected at least one answer")
    return str(answers[0])


# ------------------------------------------------------------------------------------- per-item scorers
def _one_vqa(pred: str, refs: Mapping[str, Any]) -> float:
    return M.vqa_accuracy(pred, [str(a) for a in refs["answers"]])


def _one_vqa_normalised(pred: str, refs: Mapping[str, Any]) -> float:
    """lmms-eval variant (TextVQA/OK-VQA): both sides always normalised, then leave-one-out accuracy."""
    answers = [M.normalize_vqa_answer(str(a)) for a in refs["answers"]]
    return M.vqa_accuracy(M.normalize_vqa_answer(pred), answers)


def _one_exact(pred: str, refs: Mapping[str, Any]) -> float:
    """GQA exact match after LLaVA's `rstrip('.').lower()` on the prediction (recorded variant)."""
    return M.exact_match(pred.strip().rstrip(".").lower(), _first_answer(refs))


def _one_pope(pred: str, refs: Mapping[str, Any]) -> float:
    return float(M.pope_parse(pred) == _first_answer(refs))


def _one_mme(pred: str, refs: Mapping[str, Any]) -> float:
    return float(M.mme_parse(pred) == _first_answer(refs).lower())


def _one_mc(pred: str, refs: Mapping[str, Any]) -> float:
    return float(M.extract_choice_letter(pred, refs["choices"]) == _first_answer(refs))


def _one_rec(pred: str, refs: Mapping[str, Any]) -> float:
    box = M.parse_box(pred)
    return float(box is not None and M.box_iou(box, refs["bbox"]) >= 0.5)


def _one_caption(pred: str, refs: Mapping[str, Any]) -> float:
    """Per-item ranking proxy only (CIDEr needs the whole set): best unigram F1 against a reference."""
    hyp = set(M.tokenize_caption(pred))
    best = 0.0
    for ref in refs["answers"]:
        gold = set(M.tokenize_caption(str(ref)))
        common = len(hyp & gold)
        if common:
            p, r = common / len(hyp), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


# ------------------------------------------------------------------------------------ set-level scorers
def _agg_mean(rows: Rows, one: Callable[[str, Mapping[str, Any]], float]) -> dict[str, float]:
    return {"accuracy": _mean([one(str(r["prediction"]), _refs(r)) for r in rows])}


def _agg_pope(rows: Rows) -> dict[str, float]:
    """Overall P/R/F1/acc/yes-ratio, per-split F1 and accuracy, and f1 = mean F1 over pope splits (LLaVA)."""
    preds = [str(r["prediction"]) for r in rows]
    refs = [_refs(r) for r in rows]
    out = M.pope_metrics(preds, [_first_answer(x) for x in refs])
    by_split: dict[str, list[int]] = defaultdict(list)
    for i, x in enumerate(refs):
        by_split[str(x.get("pope_split") or x.get("category") or "all")].append(i)
    f1s = []
    for split, idx in sorted(by_split.items()):
        m = M.pope_metrics([preds[i] for i in idx], [_first_answer(refs[i]) for i in idx])
        out[f"f1_{split}"], out[f"accuracy_{split}"] = m["f1"], m["accuracy"]
        f1s.append(m["f1"])
    out["f1"] = _mean(f1s)
    return out


def _agg_mme(rows: Rows) -> dict[str, float]:
    records = []
    for r in rows:
        x = _refs(r)
        records.append({"subtask": x.get("subtask") or x.get("category"), "image": x.get("image"),
                        "question": "", "answer": _first_answer(x), "prediction": str(r["prediction"])})
    scores = M.mme_scores(records)
    return {"perception": scores["perception"], "cognition": scores["cognition"],
            "accuracy": _mean([_one_mme(str(r["prediction"]), _refs(r)) for r in rows])}


def _agg_mc(rows: Rows) -> dict[str, float]:
    """CircularEval when rotated copies (index >= 1e6) are present, else plain letter accuracy."""
    out = _agg_mean(rows, _one_mc)
    refs = [_refs(r) for r in rows]
    if any(int(x.get("index") or 0) >= ROTATION_STRIDE for x in refs):
        records = [{"index": int(x["index"]), "answer": _first_answer(x), "prediction": str(r["prediction"]),
                    "choices": x["choices"], "category": x.get("category")} for r, x in zip(rows, refs, strict=True)]
        out["accuracy_plain"] = out["accuracy"]
        out["accuracy"] = M.mmbench_circular(records)["accuracy"]
    return out


REC_EXPRESSION_SPLITS = {"attribute": "ground", "position": "spatial_ground"}  # split -> sample question_type


def _agg_rec(rows: Rows) -> dict[str, float]:
    texts = [str(r["prediction"]) for r in rows]
    boxes = [list(_refs(r)["bbox"]) for r in rows]
    parsed = [M.parse_box(t) for t in texts]
    ious = [M.box_iou(p, b) if p is not None else 0.0 for p, b in zip(parsed, boxes, strict=True)]
    out = {"acc_at_0.5": M.rec_accuracy(texts, boxes), "mean_iou": _mean(ious),
           "parse_rate": _mean([float(p is not None) for p in parsed])}
    # ShapesWorld tags each expression: attributes ("the small red circle") or position only ("the shape at
    # the top"). Only the former needs the object's look; both are reported beside the overall score.
    for split, qtype in REC_EXPRESSION_SPLITS.items():
        hits = [float(i >= 0.5) for i, r in zip(ious, rows, strict=True) if _refs(r).get("question_type") == qtype]
        if hits:
            out[f"acc_at_0.5_{split}"], out[f"n_{split}"] = _mean(hits), float(len(hits))
    return out


def _agg_cider(rows: Rows) -> dict[str, float]:
    refs = [_refs(r) for r in rows]
    preds = [str(r["prediction"]) for r in rows]
    return {"cider": M.cider(preds, [[str(a) for a in x["answers"]] for x in refs]),
            "unigram_f1": _mean([_one_caption(p, x) for p, x in zip(preds, refs, strict=True)])}


# fmt: off
SCORERS: dict[str, tuple[Callable[[str, Mapping[str, Any]], float], Callable[[Rows], dict[str, float]]]] = {
    # name            per item              whole set
    "vqa_accuracy":   (_one_vqa,            lambda rows: _agg_mean(rows, _one_vqa)),
    "vqa_normalised": (_one_vqa_normalised, lambda rows: _agg_mean(rows, _one_vqa_normalised)),
    "exact_match":    (_one_exact,          lambda rows: _agg_mean(rows, _one_exact)),
    "pope":           (_one_pope,           _agg_pope),
    "mme":            (_one_mme,            _agg_mme),
    "multiple_choice": (_one_mc,            _agg_mc),
    "rec":            (_one_rec,            _agg_rec),
    "cider":          (_one_caption,        _agg_cider),
}
# fmt: on
KIND_SCORED = ("vqa_accuracy", "multiple_choice")  # scorers whose ShapesWorld sets are also split by question kind


@dataclass(frozen=True)
class Task:
    """One benchmark: prompt construction, generation budget and scoring."""

    name: str
    group: str
    metric: str  # a SCORERS key
    primary: str  # the metric (a key of `score`'s result) used for group averages
    suffix: str = ""  # appended to the question unless already present
    template: str | None = None  # builds the question from the sample when it has no human turn
    max_new_tokens: int = 16
    shapes_stream: str | None = None  # ShapesWorld generator name; None = public data (user gives the URI)
    replace: tuple[tuple[str, str], ...] = ()  # (old, new) substitutions applied to the question
    chance: float | None = None  # primary score of uniform guessing over a closed answer set; None = open answers

    def build_prompt(self, sample: Mapping[str, Any]) -> str:
        """The user turn (with `<image>`) for one sample's json; the chat template is applied by generate.py."""
        turns = sample.get("conversations") or []
        if turns and turns[0].get("from") == "human":
            question = str(turns[0]["value"])
        elif self.template is not None:
            fields = {**sample.get("meta", {}), **sample}
            fields.setdefault("ref", fields.get("expression", ""))  # public REC samples name it "expression"
            question = self.template.format(**fields)
        elif "question" in sample:
            question = str(sample["question"])
        else:
            raise ValueError(f"task {self.name}: sample {sample.get('id', '?')} has no human turn or 'question'")
        for old, new in self.replace:
            question = question.replace(old, new)
        if self.suffix and self.suffix not in question:
            question = f"{question.rstrip()}\n{self.suffix}"
        if IMAGE_TOKEN not in question:
            question = f"{IMAGE_TOKEN}\n{question}"
        return question

    def references(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The reference fields scoring needs, from the sample's json (top level, then its meta)."""
        meta = sample.get("meta") or {}
        return {k: sample[k] if k in sample else meta[k] for k in REFERENCE_KEYS if k in sample or k in meta}

    def score_one(self, prediction: str, references: Mapping[str, Any]) -> float:
        """Per-sample score in [0, 1] (the parquet `score` column, and the ranking of worst cases)."""
        return SCORERS[self.metric][0](prediction, references)

    def score(self, rows: Rows) -> dict[str, float]:
        """Aggregate metrics over all rows (pairs by row, so rows must be one row per question)."""
        if not rows:
            raise ValueError(f"task {self.name}: no predictions to score")
        out = SCORERS[self.metric][1](rows)
        if self.shapes_stream is not None and self.metric in KIND_SCORED:
            out.update(self.score_by_kind(rows))
        out["n"] = float(len(rows))
        return out

    def score_by_kind(self, rows: Rows) -> dict[str, float]:
        """ShapesWorld questions by the skill they test (their ``question_type``: colour, shape, position, ...) ->
        {"accuracy_<kind>": mean per-item score, "n_<kind>": questions}; where a set-level score hides a skill
        the model never learned (e.g. one shape answered to every shape question)."""
        by_kind: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            refs = _refs(r)  # parsed once per row
            if refs.get("question_type"):
                by_kind[str(refs["question_type"])].append(self.score_one(str(r["prediction"]), refs))
        out: dict[str, float] = {}
        for kind, scores in sorted(by_kind.items()):
            out[f"accuracy_{kind}"], out[f"n_{kind}"] = _mean(scores), float(len(scores))
        return out


_S, _MC, _T = SHORT_ANSWER_SUFFIX, MC_SUFFIX, REC_PROMPT
_OPEN, _MLLM, _LOC, _CAP = "open-ended VQA", "MLLM benchmarks", "localization", "captioning"
# fmt: off
TASKS: dict[str, Task] = {t.name: t for t in (
    #    name              group  scorer             primary        suffix  template  max_new  shapes stream
    Task("shapes-vqa",     _OPEN, "vqa_accuracy",    "accuracy",    _S,     None,     8,       "vqa"),
    Task("shapes-pope",    _MLLM, "pope",            "f1",          _S,     None,     4,       "pope", chance=0.5),
    Task("shapes-mc",      _MLLM, "multiple_choice", "accuracy",    _MC,    None,     4,       "mc", chance=0.25),
    Task("shapes-rec",     _LOC,  "rec",             "acc_at_0.5",  "",     _T,       16,      "rec"),
    Task("shapes-caption", _CAP,  "cider",           "cider",       "",     None,     48,      "caption_eval"),
    Task("vqav2",          _OPEN, "vqa_accuracy",    "accuracy",    _S,     None,     16),
    Task("gqa",            _OPEN, "exact_match",     "accuracy",    _S,     None,     16),
    Task("textvqa",        _OPEN, "vqa_normalised",  "accuracy",    _S,     None,     16),
    Task("pope",           _MLLM, "pope",            "f1",          _S,     None,     8, chance=0.5),
    Task("mme",            _MLLM, "mme",             "accuracy",    _S,     None,     8,       None,
         ((MME_ORIGINAL_SUFFIX, ""),)),
    Task("mmbench",        _MLLM, "multiple_choice", "accuracy",    _MC,    None,     8, chance=0.25),
    Task("refcoco",        _LOC,  "rec",             "acc_at_0.5",  "",     _T,       32),
)}
# fmt: on


def get_task(name: str) -> Task:
    """The registered task `name`; unknown names raise listing the valid ones."""
    if name not in TASKS:
        raise KeyError(f"unknown eval task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]


def group_scores(task_scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-group mean of each task's primary metric (only groups with at least one task present)."""
    by_group: dict[str, list[float]] = defaultdict(list)
    for name, scores in task_scores.items():
        task = get_task(name)
        by_group[task.group].append(float(scores[task.primary]))
    return {group: _mean(values) for group, values in by_group.items()}
