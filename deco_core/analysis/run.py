"""The analysis entry points behind ``deco analyze`` and the workflow's analyze stage: R-GAE relevance files for
one (image, prompt) and the ShapesWorld locality score (``run_analysis``: locality JSON + figures)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RELEVANCE_PNG, RELEVANCE_JSON = "relevance.png", "relevance.json"
LOCALITY_PNG, LOCALITY_JSON, EXAMPLE_PNG = "locality.png", "locality.json", "relevance_example.png"


def load_cpu_model(model_uri: str, storage=None):
    """An exported model (local folder or s3://) on the CPU, as the analysis runs it."""
    from deco_core.eval.generate import load_model

    return load_model(model_uri, storage, device="cpu")


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def relevance_files(model, image_path: Path, prompt: str, answer: str | None, out_dir: Path,
                    max_new_tokens: int = 16) -> dict[str, Any]:
    """Explain one (image, prompt[, answer]); write the figure and a JSON of maps and per-word scores."""
    from PIL import Image, UnidentifiedImageError

    from deco_core.analysis.explain import analyze_relevance
    from deco_core.analysis.locality import map_scores
    from deco_core.analysis.plots import model_view, plot_relevance

    try:
        image = Image.open(image_path).convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"--image {image_path}: cannot read the image ({exc})") from None
    result = analyze_relevance(model, image, prompt, answer, max_new_tokens=max_new_tokens)
    png = plot_relevance(result, model_view(model, image), out_dir / RELEVANCE_PNG)
    scores = {w: map_scores(result.t2p[i]) for i, w in enumerate(result.words)}
    data = {**result.to_json(), "image": str(image_path), "scores": {"per_word": scores,
                                                                     "answer": map_scores(result.answer_t2p)}}
    return {"result": result, "files": [str(png), str(_write_json(out_dir / RELEVANCE_JSON, data))]}


def locality_files(model, out_dir: Path, num_samples: int, seed: int = 0, figure_samples: int = 8) -> dict[str, Any]:
    """Score locality on the fixed probe set; write locality.json, locality.png and one per-word example."""
    from deco_core.analysis.locality import locality_samples, locality_scores
    from deco_core.analysis.plots import model_view, plot_locality, plot_relevance
    from deco_core.data.shapes import ShapesConfig

    config = ShapesConfig(image_size=max(24, int(model.cfg.vision.image_size)))
    samples = locality_samples(num_samples, seed, config=config)
    scores = locality_scores(model, samples, keep_results=figure_samples)
    examples = scores.pop("results")
    files = [str(_write_json(out_dir / LOCALITY_JSON, {**scores, "projector": model.cfg.projector.name,
                                                        "seed": seed}))]
    files.append(str(plot_locality(examples, scores, out_dir / LOCALITY_PNG)))
    sample, result = examples[0]
    files.append(str(plot_relevance(result, model_view(model, sample.image()), out_dir / EXAMPLE_PNG)))
    return {"scores": scores, "files": files}


def run_analysis(model_uri: str, out_dir: str | Path, num_samples: int = 16, seed: int = 0,
                 storage=None) -> dict[str, Any]:
    """The analyze stage: load the exported model (local or s3://), score locality on `num_samples` probes.

    Returns {"scores": flat metrics (no per-sample rows), "per_sample": rows, "files": written paths}.
    """
    if num_samples < 1:
        raise ValueError(f"run_analysis: num_samples={num_samples}; expected >= 1")
    model = load_cpu_model(model_uri, storage)
    out = locality_files(model, Path(out_dir), num_samples, seed)
    per_sample = out["scores"].pop("per_sample")
    log.info("analysis of %s: mass in box %.3f vs uniform %.3f, pointing %.3f", model_uri,
             out["scores"]["mass_in_box"], out["scores"]["uniform_baseline"], out["scores"]["pointing_hit_rate"])
    return {"scores": out["scores"], "per_sample": per_sample, "files": out["files"]}


__all__ = ["load_cpu_model", "locality_files", "relevance_files", "run_analysis"]
