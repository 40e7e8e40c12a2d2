"""The binding probe: how many steps the tiny LLM needs to learn a membership test, by how the objects and the
question are written.

POPE and the MC/REC questions that name an object by colour *and* shape ask the LLM to test whether a queried
attribute pair is bound to one object of the scene. This probe isolates that skill from vision, projector and
data: the tiny Llama of ``conf/model/tiny.yaml`` (sizes only; a small synthetic vocabulary) learns, from scratch,
to answer yes/no for a scene of 1–4 objects and one query, in three writings:

| variant  | one object is                     | the query is         | negatives                            |
|----------|-----------------------------------|----------------------|--------------------------------------|
| single   | one of 40 tokens                  | one token            | any absent token                     |
| bound    | one token per colour × shape      | colour, shape tokens | share one attribute with an object   |
| text     | colour, shape, separator tokens   | colour, shape tokens | share one attribute with an object   |

``bound`` is what a visual token can carry (one patch holds both attributes); ``text`` is the scene written out.
About half the queries are present (a changed attribute can land on another object's). Accuracy is greedy on
a fresh held-out batch; a plateau shows as accuracy stuck near 0.5–0.75 (the heuristic "is one attribute present").

Run: ``python -m pipelines.experiments.binding --steps 3000`` → ``runs/binding/binding.json`` + an MLflow run in
experiment ``deco-binding`` (the final accuracy and the steps to 0.95 per variant, the JSON as an artifact).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

VARIANTS = ("single", "bound", "text")
EXPERIMENT = "deco-binding"
N_COLOURS, N_SHAPES, N_SINGLE, MAX_OBJECTS = 8, 4, 40, 4
PAD, BOS, SEP, QUERY, YES, NO = 0, 1, 2, 3, 4, 5
COLOUR0 = 6  # colour tokens 6..13, shape tokens 14..17, bound / single tokens from 18
SHAPE0 = COLOUR0 + N_COLOURS
OBJECT0 = SHAPE0 + N_SHAPES
VOCAB = OBJECT0 + max(N_SINGLE, N_COLOURS * N_SHAPES)


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, T]; the last token is the answer (YES | NO)
    present: np.ndarray  # [B] bool: the query is one of the scene's objects


def _scene_tokens(variant: str, objects: list[tuple[int, int]]) -> list[int]:
    if variant == "bound":
        return [OBJECT0 + c * N_SHAPES + s for c, s in objects]
    tokens: list[int] = []
    for c, s in objects:
        tokens += [COLOUR0 + c, SHAPE0 + s, SEP]
    return tokens


def make_batch(variant: str, size: int, rng: np.random.Generator, single_share: float = 0.0) -> Batch:
    """``size`` scenes with one query each, left-padded to one length (every row ends in its answer).

    ``single_share``: the fraction of conjunction-variant queries that name one attribute only (colour or shape,
    a curriculum of the easy membership test beside the hard one)."""
    if variant not in VARIANTS:
        raise ValueError(f"binding variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    rows, present = [], np.zeros(size, bool)
    for i in range(size):
        k = int(rng.integers(1, MAX_OBJECTS + 1))
        want = bool(rng.random() < 0.5)
        if variant == "single":
            objs = [int(x) for x in rng.choice(N_SINGLE, k, replace=False)]
            query = objs[int(rng.integers(k))] if want else int(rng.choice(sorted(set(range(N_SINGLE)) - set(objs))))
            scene, ask = [OBJECT0 + o for o in objs], [OBJECT0 + query]
            present[i] = query in objs
        else:
            pairs = [(int(rng.integers(N_COLOURS)), int(rng.integers(N_SHAPES))) for _ in range(k)]
            c, s = pairs[int(rng.integers(k))]
            if not want:  # change one attribute of a scene object: the other one is in the scene
                c, s = (int(rng.integers(N_COLOURS)), s) if rng.random() < 0.5 else (c, int(rng.integers(N_SHAPES)))
            scene, ask = _scene_tokens(variant, pairs), [COLOUR0 + c, SHAPE0 + s]
            present[i] = (c, s) in pairs
            if single_share and rng.random() < single_share:  # one attribute: a scene object's, or any
                colour = bool(rng.random() < 0.5)
                value = (c, s)[0 if colour else 1] if want else int(rng.integers(N_COLOURS if colour else N_SHAPES))
                ask = [COLOUR0 + value] if colour else [SHAPE0 + value]
                present[i] = value in [p[0 if colour else 1] for p in pairs]
        rows.append([BOS, *scene, QUERY, *ask, YES if present[i] else NO])
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    return Batch(ids, present)


def build_llm(layers: int | None = None):
    """The tiny Llama's sizes from conf/model/tiny.yaml with the probe's vocabulary (random init)."""
    from transformers import LlamaForCausalLM

    from deco_core.config import compose
    from deco_core.model.llm import tiny_llama_config

    config = tiny_llama_config(compose("pipeline/tiny").model.llm, VOCAB, PAD, BOS, PAD)  # no EOS: never generates
    config.num_hidden_layers = layers or config.num_hidden_layers
    return LlamaForCausalLM(config)


def accuracy(model, batch: Batch) -> float:
    """Greedy answer accuracy: the logits before the last token against the answer."""
    with torch.no_grad():
        mask = (batch.input_ids != PAD).long()
        logits = model(input_ids=batch.input_ids[:, :-1], attention_mask=mask[:, :-1]).logits[:, -1]  # [B, V]
    return float((logits.argmax(-1) == batch.input_ids[:, -1]).float().mean())


def train_variant(variant: str, steps: int, batch_size: int = 32, lr: float = 1e-3, eval_every: int = 200,
                  seed: int = 0, layers: int | None = None, single_share: float = 0.0) -> list[dict[str, float]]:
    """Train a fresh tiny LLM on one variant; returns the curve [{step, loss, accuracy, seconds}] (accuracy on
    held-out conjunction queries whatever ``single_share``)."""
    torch.manual_seed(seed)
    rng, held = np.random.default_rng(seed), make_batch(variant, 500, np.random.default_rng(seed + 1000))
    model = build_llm(layers)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    curve, losses, start = [], [], time.perf_counter()
    for step in range(1, steps + 1):
        b = make_batch(variant, batch_size, rng, single_share)
        labels = torch.full_like(b.input_ids, -100)
        labels[:, -1] = b.input_ids[:, -1]  # loss on the answer only
        loss = model(input_ids=b.input_ids, attention_mask=(b.input_ids != PAD).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            model.eval()
            point = {"step": step, "loss": round(float(np.mean(losses[-eval_every:])), 4),
                     "accuracy": round(accuracy(model, held), 4), "seconds": round(time.perf_counter() - start, 1)}
            model.train()
            curve.append(point)
            log.info("binding %-6s step %5d  loss %.3f  held-out accuracy %.3f  (%.0fs)", variant, step,
                     point["loss"], point["accuracy"], point["seconds"])
    return curve


def first_step_at(curve: list[dict[str, float]], level: float) -> int | None:
    """The first evaluated step whose accuracy reaches ``level`` (None: never)."""
    return next((int(p["step"]) for p in curve if p["accuracy"] >= level), None)


def run(variants: tuple[str, ...], steps: int, out: Path, tracking_uri: str | None = None, track: bool = True,
        **kwargs: Any) -> dict[str, Any]:
    """Train every variant, write ``out/binding.json`` and (``track``) log it as an MLflow run in experiment
    ``deco-binding`` at ``tracking_uri`` (default: the tiny config's store under ``out``)."""
    curves = {v: train_variant(v, steps, **kwargs) for v in variants}
    result = {"steps": steps, **kwargs, "variants": {
        v: {"final_accuracy": c[-1]["accuracy"], "steps_to_0.95": first_step_at(c, 0.95), "curve": c}
        for v, c in curves.items()}}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "binding.json"
    path.write_text(json.dumps(result, indent=2))
    log.info("wrote %s", path)
    if track:
        from deco_core.config import compose
        from deco_core.tracking import resolve_tracking_uri
        from pipelines.experiments.bench.report import log_summary_run

        uri = tracking_uri or resolve_tracking_uri(compose("pipeline/tiny").tracking, out)
        metrics = {f"{v}.{k}": r[k] for v, r in result["variants"].items() for k in ("final_accuracy", "steps_to_0.95")
                   if r[k] is not None}
        result["mlflow_run_id"] = log_summary_run(uri, EXPERIMENT, out, f"binding-{time.strftime('%Y%m%d-%H%M%S')}",
                                                  {"steps": steps, "variants": ",".join(variants), **kwargs}, metrics,
                                                  [path])
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=None, help="LLM layers (default: conf/model/tiny.yaml)")
    p.add_argument("--single-share", type=float, default=0.0,
                   help="fraction of training queries naming one attribute (bound/text variants)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/binding"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(a.threads)
    run(tuple(v.strip() for v in a.variants.split(",") if v.strip()), a.steps, a.out, batch_size=a.batch_size,
        lr=a.lr, layers=a.layers, single_share=a.single_share)


if __name__ == "__main__":
    main()
