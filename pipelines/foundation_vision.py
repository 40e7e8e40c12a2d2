"""``make foundation-vision`` / ``python -m pipelines.foundation_vision [--config conf/foundation/vision_tiny.yaml]
[--steps N]``: build the tiny vision tower, the stand-in for the pretrained CLIP ViT that DeCo keeps frozen.

A randomly initialised tower does not encode shape, colour or place; trained inside every recipe run it spends the
run's budget learning to see, and a short run (the projector grid's) never gets to use the image at all (its scores
equal its blind baseline). This build trains the tower once, projector-neutrally, and freezes it for every
projector afterwards, as the paper does with CLIP:

1. runs the pipeline's own ``prepare_data`` and ``pretrain`` stages (Ray Data + Ray Train + DeepSpeed, MLflow
   experiment ``deco-foundation``) with the all-patch MLP projector (no pooling, no queries: no projector's
   inductive bias is baked into the features), the foundation LLM frozen, tower + projector trainable, on the
   dense captions (every object's size, colour, shape and position);
2. writes ``<out>/vision`` (``CLIPVisionModel.save_pretrained`` + ``foundation.json``: how it was built, its
   caption losses), atomically, replacing an older build.

``conf/model/tiny.yaml`` loads ``<out>/vision`` through ``model.vision.path``, the path a real CLIP checkpoint takes.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deco_core.config import CONF_DIR, Config, ConfigError, compose, load_structured, to_dict
from pipelines.foundation import EXPERIMENT, publish

log = logging.getLogger(__name__)
DEFAULT_CONFIG = CONF_DIR / "foundation" / "vision_tiny.yaml"
STAGES = ["prepare_data", "pretrain"]


@dataclass
class VisionFoundationConfig:
    """The build (conf/foundation/vision_*.yaml)."""

    base: str = "pipeline/tiny"
    overrides: list[str] = field(default_factory=lambda: [
        "model.vision.path=null", "model.projector=mlp", "pretrain.train_vision=true",
        "pretrain.train_projector=true", "pretrain.train_llm=false"])
    out: str = "artifacts/foundation/tiny"  # <out>/vision is what model.vision.path names
    root: str = "runs/foundation_vision"  # shards, Ray checkpoints, the staged export, MLflow


def load_vision_config(path: str | Path) -> VisionFoundationConfig:
    """YAML -> VisionFoundationConfig; unknown keys and bad types raise ConfigError naming the file."""
    vc: VisionFoundationConfig = load_structured(path, VisionFoundationConfig, "vision foundation")
    return vc


def build_config(vc: VisionFoundationConfig, steps: int | None = None) -> Config:
    """The composed pipeline config of the build: the base with ``vc.overrides``, rooted at ``vc.root``.

    Refuses a config that would not train a new tower (a vision path set, or the tower frozen in ``pretrain``)."""
    extra = [f"pipeline.root={vc.root}", "pipeline.name=foundation-vision", f"tracking.experiment={EXPERIMENT}"]
    if steps:
        extra.append(f"pretrain.max_steps={steps}")
    cfg = compose(vc.base, [*vc.overrides, *extra])
    if cfg.model.vision.path:
        raise ConfigError(f"vision foundation build: model.vision.path={cfg.model.vision.path!r}; the build trains "
                          "a new tower from its config (add model.vision.path=null to overrides)")
    if not cfg.pretrain.train_vision:
        raise ConfigError("vision foundation build: pretrain.train_vision=false; the build trains the tower in the "
                          "pretrain stage (add pretrain.train_vision=true to overrides)")
    return cfg


def manifest_of(vc: VisionFoundationConfig, cfg: Config, outputs: dict[str, Any]) -> dict[str, Any]:
    """``foundation.json``: how the tower was built and how far its caption loss fell."""
    return {
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "steps": outputs.get("steps"), "wall_s": outputs.get("wall_s"),
        "final_loss": outputs.get("final_loss"), "val_loss": outputs.get("val_loss"),
        "mlflow_run": outputs.get("mlflow_run"), "build": asdict(vc), "vision": to_dict(cfg.model.vision),
        "projector": to_dict(cfg.model.projector),
        "train": {k: v for k, v in to_dict(cfg.pretrain).items() if k != "deepspeed_config"},
    }


def build(vc: VisionFoundationConfig, steps: int | None = None, out: Path | None = None) -> dict[str, Any]:
    """Run the whole build; returns the manifest written to ``<out>/vision/foundation.json``."""
    from deco_core.model.deco import DecoModel
    from pipelines.workflow.runner import Workflow

    started = time.perf_counter()
    cfg = build_config(vc, steps)
    workflow = Workflow(cfg)
    workflow.run(only=STAGES)
    outputs = workflow.load_state()["stages"]["pretrain"]["outputs"]
    model = DecoModel.from_pretrained(outputs["model"])
    manifest = manifest_of(vc, cfg, outputs)
    manifest["total_wall_s"] = round(time.perf_counter() - started, 1)
    final = publish([model.vision.model], manifest, out or Path(vc.out), name="vision")
    log.info("foundation vision tower written to %s (%s steps, caption loss %s, %.0f s)", final, outputs.get("steps"),
             outputs.get("final_loss"), manifest["total_wall_s"])
    return manifest


def main(argv: list[str] | None = None) -> None:
    from deco_core.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m pipelines.foundation_vision",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="build file (conf/foundation/*.yaml)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the pretrain section's)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the config's `out`)")
    args = parser.parse_args(argv)
    setup_logging()
    build(load_vision_config(args.config), args.steps, args.out)


if __name__ == "__main__":
    main()
