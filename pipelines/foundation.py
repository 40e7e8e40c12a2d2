"""``make foundation`` / ``python -m pipelines.foundation [--config conf/foundation/tiny.yaml] [--steps N]``: build
the tiny foundation LLM, the stand-in for the pretrained LLM (Vicuna) that DeCo leaves all semantic abstraction to.

The tiny default's LLM is a randomly initialised 3-layer Llama; trained from scratch inside the recipe it never
learns the presence test (POPE) or letter choices in the stage budget (README, "Results"). This build teaches it
the ShapesWorld language once, with the scene written as text in place of the image (``deco_core.data.scene_text``):

1. writes text-only WebDataset shards (benchmark formats + multi-turn instructions, scene as text),
2. trains the LLM alone on them with the product's engine (Ray Train + DeepSpeed ZeRO, the ``finetune`` stage of
   the composed config, ``conf/train/foundation_tiny.yaml``; an MLflow run in experiment ``deco-foundation``),
3. scores the result on the ShapesWorld eval questions with the scene as text (``scene_text_eval``),
4. writes ``<out>/<name>`` (``save_pretrained`` weights + tokenizer + ``foundation.json``: how it was built, what it
   scores, the digest of the vocabulary it was trained with) — atomically, replacing an older build.

A build with ``init`` set goes on training an earlier build instead of a random LLM (a curriculum phase; its
manifest keeps the earlier one's under ``parent``). The tiny build has two phases (``make foundation``): the
formats from scratch (``conf/foundation/tiny.yaml`` -> ``llm-base``), then letter choices on top
(``conf/foundation/tiny_choice.yaml`` -> ``llm``, the folder the pipeline loads).

``conf/pipeline/tiny.yaml`` loads ``<out>/llm`` through ``model.llm.path``, the path a real checkpoint takes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deco_core.config import CONF_DIR, Config, ConfigError, compose, load_structured, to_dict
from deco_core.data.storage import join_uri
from deco_core.model.builds import FOUNDATION_MANIFEST, read_build

log = logging.getLogger(__name__)
DEFAULT_CONFIG = CONF_DIR / "foundation" / "tiny.yaml"
EXPERIMENT = "deco-foundation"


@dataclass
class FoundationConfig:
    """The build (conf/foundation/*.yaml)."""

    base: str = "pipeline/tiny"
    overrides: list[str] = field(default_factory=lambda: ["finetune=foundation_tiny", "model.llm.path=null"])
    out: str = "artifacts/foundation/tiny"  # <out>/<name> is what model.llm.path names
    name: str = "llm"
    init: str | None = None  # an LLM build to go on training (its weights and tokenizer); null: a random LLM
    root: str = "runs/foundation"  # shards, Ray checkpoints, the staged export
    format_samples: int = 104000
    instruct_samples: int = 24000
    format_mix: dict[str, float] = field(default_factory=lambda: {"rec": 0.25, "vqa": 0.15, "pope": 0.3, "mc": 0.3})
    val_samples: int = 512
    eval_samples: int = 300  # text questions per task scored on the result


def load_foundation_config(path: str | Path) -> FoundationConfig:
    """YAML -> FoundationConfig; unknown keys and bad types raise ConfigError naming the file."""
    fc: FoundationConfig = load_structured(path, FoundationConfig, "foundation")
    if min(fc.format_samples + fc.instruct_samples, fc.val_samples, fc.eval_samples) < 1:
        raise ConfigError(f"{path}: format_samples + instruct_samples, val_samples and eval_samples must be >= 1")
    return fc


def build_config(fc: FoundationConfig, steps: int | None = None) -> Config:
    """The composed pipeline config of the build: the base with ``fc.overrides``, rooted at ``fc.root``."""
    extra = [f"pipeline.root={fc.root}", "pipeline.name=foundation", f"tracking.experiment={EXPERIMENT}",
             "pipeline.reuse_train_workers=false"]
    if steps:
        extra.append(f"finetune.max_steps={steps}")
    if fc.init:
        extra += [f"model.llm.path={fc.init}", f"model.tokenizer.path={fc.init}"]
    cfg = compose(fc.base, [*fc.overrides, *extra])
    t = cfg.finetune
    if t.train_vision or t.train_projector or not t.train_llm:
        raise ConfigError(f"foundation build: the finetune section must train the LLM alone (train_vision="
                          f"{t.train_vision}, train_projector={t.train_projector}, train_llm={t.train_llm})")
    if fc.init:
        check_init("foundation build", "LLM", fc.init, cfg.model.llm.path, "(`make foundation`)")
    elif cfg.model.llm.path:
        raise ConfigError(f"foundation build: model.llm.path={cfg.model.llm.path!r}; the build trains a new LLM "
                          "from its config (add model.llm.path=null to overrides, or name a build to go on "
                          "training in `init`)")
    return cfg


def check_init(build: str, kind: str, init: str, path: str, how: str = "") -> None:
    """Refuse an ``init`` whose resolved ``path`` holds no saved build (no ``config.json``), naming both."""
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"{build}: init={init!r} ({path}) holds no {kind} build (no config.json); build it first"
                          f"{' ' + how if how else ''} or set init: null")


def data_fingerprint(fc: FoundationConfig, cfg: Config) -> str:
    """Digest of what shapes the text shards: counts, mix, the ShapesWorld settings and the text code."""
    import deco_core.data.scene_text as scene_text
    import deco_core.data.shapes_text as shapes_text

    h = hashlib.sha256(json.dumps({"formats": fc.format_samples, "instruct": fc.instruct_samples,
                                   "mix": fc.format_mix, "val": fc.val_samples,
                                   "shapes": asdict(cfg.data.shapes)}, sort_keys=True, default=str).encode())
    for module in (scene_text, shapes_text):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


def write_text_shards(fc: FoundationConfig, cfg: Config) -> tuple[str, str]:
    """Train and val text shards under ``<root>/data/<fingerprint>`` (reused when their manifests exist)."""
    from deco_core.data.scene_text import text_corpus
    from deco_core.data.shards import read_manifest, write_shards

    base = join_uri(fc.root, "data", data_fingerprint(fc, cfg))
    seed, shapes, d = cfg.data.shapes.seed, cfg.data.shapes, cfg.data
    n_val_instruct = fc.val_samples * fc.instruct_samples // (fc.format_samples + fc.instruct_samples)
    plan = [("train", fc.format_samples, fc.instruct_samples), ("val", fc.val_samples - n_val_instruct,
                                                                n_val_instruct)]
    uris = []
    for split, n_formats, n_instruct in plan:
        uri = join_uri(base, split)
        try:
            read_manifest(uri, d.storage)
            log.info("foundation %s shards: reusing %s", split, uri)
        except FileNotFoundError:
            samples = text_corpus(n_formats, n_instruct, seed, split, shapes, fc.format_mix)
            write_shards(samples, uri, source="shapes-text", split=split, samples_per_shard=d.samples_per_shard,
                         storage=d.storage, total=n_formats + n_instruct)
        uris.append(uri)
    return uris[0], uris[1]


def manifest_of(fc: FoundationConfig, cfg: Config, result: Any, scores: dict[str, dict[str, float]],
                tokenizer: Any) -> dict[str, Any]:
    """``foundation.json``: how the LLM was built and what it scores with the scene as text."""
    from deco_core.model.tokenizer import vocab_digest

    return {
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "steps": result.steps, "wall_s": round(result.wall_s, 1),
        "final_loss": result.metrics.get("loss"), "val_loss": result.metrics.get("val_loss"),
        "mlflow_run": result.run_id, "vocab_digest": vocab_digest(tokenizer), "vocab_size": len(tokenizer),
        "scene_text_scores": scores, "build": asdict(fc), "llm": to_dict(cfg.model.llm),
        "train": {k: v for k, v in to_dict(cfg.finetune).items() if k != "deepspeed_config"},
        "parent": read_build(cfg.model.llm.path) if fc.init else None,  # the build this one went on from
    }


def publish(parts: list[Any], manifest: dict[str, Any], out: Path, name: str = "llm") -> Path:
    """Write ``<out>/<name>`` (each part's ``save_pretrained`` + the manifest) in a temporary folder beside it, then
    swap it in.

    Never a half-written export and never a moment without one: the old build is renamed aside, the new one renamed
    in, and the old one restored if that rename fails.
    """
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
    try:
        for part in parts:
            part.save_pretrained(staging)  # safetensors: transformers' default
        (staging / FOUNDATION_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for path in [staging, *staging.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # mkdtemp's 0700 would hide the build from other users
        final = out / name
        retired = out / f".{name}-old-{staging.name}"
        if final.exists():
            final.rename(retired)  # the old build stays whole until the new one is in place
        try:
            staging.rename(final)
        except BaseException:
            if retired.exists() and not final.exists():
                retired.rename(final)
            raise
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def build(fc: FoundationConfig, steps: int | None = None, out: Path | None = None) -> dict[str, Any]:
    """Run the whole build; returns the manifest written to ``<out>/llm/foundation.json``."""
    from deco_core.eval.scene_text_eval import score_scene_text
    from deco_core.model.deco import DecoModel
    from deco_core.tracking import resolve_tracking_uri
    from deco_core.train.sources import ray_storage
    from deco_core.train.trainer import run_stage
    from pipelines.ops.runtime import ensure_ray

    started = time.perf_counter()
    cfg = build_config(fc, steps)
    train_uri, val_uri = write_text_shards(fc, cfg)
    ensure_ray(cfg)
    result = run_stage(cfg, "finetune", sources=[(train_uri, 1.0)], val_uri=val_uri,
                       output_uri=join_uri(fc.root, "export"), run_name="foundation",
                       storage_path=ray_storage(cfg))
    model = DecoModel.from_pretrained(result.output_uri)
    scores = score_scene_text(model, fc.eval_samples, cfg.data.shapes.seed, cfg.data.shapes)
    manifest = manifest_of(fc, cfg, result, scores, model.tokenizer)
    manifest["total_wall_s"] = round(time.perf_counter() - started, 1)
    final = publish([model.llm, model.tokenizer], manifest, out or Path(fc.out), fc.name)
    if result.run_id:
        from mlflow import MlflowClient

        client = MlflowClient(resolve_tracking_uri(cfg.tracking, cfg.pipeline.root))
        for task, metrics in scores.items():
            for name, value in metrics.items():
                client.log_metric(result.run_id, f"scene_text/{task}/{name}", float(value))
        client.log_artifact(result.run_id, str(final / FOUNDATION_MANIFEST))
    log.info("foundation LLM written to %s (%d steps, %.0f s)", final, result.steps, manifest["total_wall_s"])
    return manifest


def main(argv: list[str] | None = None) -> None:
    from deco_core.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m pipelines.foundation", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="build file (conf/foundation/*.yaml)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the train section's)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the config's `out`)")
    args = parser.parse_args(argv)
    setup_logging()
    manifest = build(load_foundation_config(args.config), args.steps, args.out)
    log.info("scene-as-text scores: %s", {t: {k: round(v, 3) for k, v in m.items() if k in (
        "accuracy", "f1", "acc_at_0.5")} for t, m in manifest["scene_text_scores"].items()})


if __name__ == "__main__":
    main()
