"""R-GAE analysis end to end: the `deco analyze` CLI on a saved model, and locality after a short real training."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from deco_core.analysis.locality import locality_samples, locality_scores
from deco_core.analysis.run import run_analysis
from deco_core.cli import app
from deco_core.config import compose
from deco_core.data.conversation import preprocess_conversation
from deco_core.data.prompts import IMAGE_TOKEN, SHORT_ANSWER_SUFFIX
from deco_core.data.shapes import ShapesConfig, eval_vqa_samples
from deco_core.data.shapes_scene import iter_scenes, render_png
from deco_core.data.shapes_text import build_qa
from deco_core.data.transforms import ImageTransform
from deco_core.model.deco import DecoModel


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, shapes_tokenizer):
    """An untrained tiny DeCo model exported with save_pretrained, plus one ShapesWorld PNG."""
    root = tmp_path_factory.mktemp("analysis")
    DecoModel.from_config(compose("pipeline/tiny").model, shapes_tokenizer).save_pretrained(root / "model")
    (root / "image.png").write_bytes(next(eval_vqa_samples(1, 0))["png"])
    return root


def _invoke(*args: str):
    return CliRunner().invoke(app, ["analyze", *args])


def test_cli_relevance_writes_png_and_json(saved_model, tmp_path) -> None:
    """`deco analyze relevance` with --answer writes a PNG figure and a JSON with per-word maps and scores."""
    res = _invoke("relevance", "--model", str(saved_model / "model"), "--image", str(saved_model / "image.png"),
                  "--prompt", "What colour is the circle?", "--answer", "large red", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    png, data = tmp_path / "relevance.png", json.loads((tmp_path / "relevance.json").read_text())
    assert Image.open(png).format == "PNG"
    assert data["words"] == ["large", "red"] and len(data["t2p"]) == 2 and len(data["t2p"][0]) == 144
    assert len(data["t2q"][0]) == 36 and data["q2p_method"] == "pool-matrix"  # the tiny default: M = 36
    assert set(data["scores"]["per_word"]) == {"large", "red"}


def test_cli_relevance_generates_answer_when_absent(saved_model, tmp_path) -> None:
    """Without --answer the greedy answer is generated, explained and reported."""
    res = _invoke("relevance", "--model", str(saved_model / "model"), "--image", str(saved_model / "image.png"),
                  "--prompt", "What shape is it?", "--max-new-tokens", "3", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "relevance.json").read_text())
    assert data["answer"] and 1 <= len(data["t2p"]) <= 3 and "answer:" in res.output


def test_cli_relevance_bad_image_is_a_clean_error(saved_model, tmp_path) -> None:
    """A missing image exits with code 2 and names the path."""
    res = _invoke("relevance", "--model", str(saved_model / "model"), "--image", str(tmp_path / "nope.png"),
                  "--prompt", "hi", "--answer", "red", "--out", str(tmp_path))
    assert res.exit_code == 2 and "nope.png" in res.output


def test_run_analysis_writes_files_and_scores(saved_model, tmp_path) -> None:
    """run_analysis (the analyze stage) returns flat scores and writes JSON + figures that exist."""
    out = run_analysis(str(saved_model / "model"), tmp_path, num_samples=2, seed=0)
    assert out["scores"]["num_samples"] + out["scores"]["skipped"] == 2 and len(out["per_sample"]) >= 1
    assert {p.rsplit("/", 1)[-1] for p in out["files"]} == {"locality.json", "locality.png", "relevance_example.png"}
    saved = json.loads((tmp_path / "locality.json").read_text())
    assert 0 <= saved["mass_in_box"] <= 1 and 0 < saved["uniform_baseline"] < 1


# ----------------------------------------------------------------------------------------- trained model
def _training_set(model: DecoModel, n: int, seed: int) -> list[tuple[list[int], list[int], np.ndarray]]:
    """Single-turn colour / shape / grounding questions (vicuna_v1), tokenised, with transformed pixels."""
    config, transform = ShapesConfig(), ImageTransform.from_vision_config(model.cfg.vision)
    kinds = ("colour", "shape", "ground")
    rows = []
    for index, scene, rng in iter_scenes("relevance-train", n, seed, "train", config):
        qa = build_qa(kinds[index % len(kinds)], scene, rng, config)
        assert qa is not None
        question = f"{IMAGE_TOKEN}\n{qa.question}" + (f"\n{SHORT_ANSWER_SUFFIX}" if qa.short else "")
        ex = preprocess_conversation([{"from": "human", "value": question}, {"from": "gpt", "value": qa.answer}],
                                     model.tokenizer, "vicuna_v1", model.image_token_id, model.num_image_tokens,
                                     192, has_image=True)
        rows.append((ex.input_ids, ex.labels, transform(Image.open(io.BytesIO(render_png(scene))))))
    return rows


def _batch(rows, pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r_ids, r_labels, _) in enumerate(rows):
        ids[i, : len(r_ids)], labels[i, : len(r_ids)], mask[i, : len(r_ids)] = (
            torch.tensor(r_ids), torch.tensor(r_labels), 1)
    return ids, mask, torch.as_tensor(np.stack([r[2] for r in rows])), labels


def train_tiny_deco(tokenizer, steps: int, num_samples: int = 1536, batch_size: int = 32,
                    lr: float = 1e-3) -> DecoModel:
    """A tiny DeCo model trained single-process (plain torch loop, projector + LLM, frozen random ViT)."""
    model = DecoModel.from_config(compose("pipeline/tiny").model, tokenizer)
    model.freeze_for_stage("finetune")
    data = _training_set(model, num_samples, seed=1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    pick = random.Random(0)
    model.train()
    for _ in range(steps):
        ids, mask, pixels, labels = _batch(pick.sample(data, batch_size), tokenizer.pad_token_id)
        loss = model(ids, mask, pixels, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return model.eval()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trained_deco_relevance_is_local(shapes_tokenizer) -> None:
    """After a short training, the answer's T2P mass lies in the named object's box well above uniform."""
    model = train_tiny_deco(shapes_tokenizer, steps=300)
    scores = locality_scores(model, locality_samples(24, seed=0))
    assert scores["num_samples"] >= 20
    assert scores["mass_lift"] > 1.5, scores  # measured ~2.7 (uniform = 1)
    assert scores["pointing_hit_rate"] > 1.5 * scores["uniform_baseline"], scores  # measured ~5x
