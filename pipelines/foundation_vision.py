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

``objective: dense`` replaces step 1 by a Ray Train + DeepSpeed job on per-patch labels (``targets``: shape, colour,
size, position, box, and ``keep``: stay close to the ``init`` tower's features; ``deco_core.train.dense``); ``init``
goes on training an earlier tower build (its manifest under ``parent``) and ``name`` picks the export folder
(``conf/foundation/vision_tiny_dense.yaml`` -> ``<out>/vision-dense``).
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
from deco_core.model.builds import read_build
from pipelines.foundation import EXPERIMENT, check_init, publish

log = logging.getLogger(__name__)
DEFAULT_CONFIG = CONF_DIR / "foundation" / "vision_tiny.yaml"
STAGES = ["prepare_data", "pretrain"]
OBJECTIVES = ("captions", "dense")


@dataclass
class VisionFoundationConfig:
    """The build (conf/foundation/vision_*.yaml)."""

    base: str = "pipeline/tiny"
    overrides: list[str] = field(default_factory=lambda: [
        "model.vision.path=null", "model.projector=mlp", "pretrain.train_vision=true",
        "pretrain.train_projector=true", "pretrain.train_llm=false"])
    out: str = "artifacts/foundation/tiny"  # <out>/vision is what model.vision.path names
    objective: str = "captions"  # captions: prepare_data + pretrain; dense: per-patch attribute labels
    targets: list[str] = field(default_factory=lambda: ["shape", "colour", "size"])  # dense: the labels it learns
    init: str | None = None  # a tower build to go on training (a second phase); null: a random tower
    name: str = "vision"  # the export folder under `out`
    root: str = "runs/foundation_vision"  # shards, Ray checkpoints, the staged export, MLflow


def load_vision_config(path: str | Path) -> VisionFoundationConfig:
    """YAML -> VisionFoundationConfig; unknown keys and bad types raise ConfigError naming the file."""
    vc: VisionFoundationConfig = load_structured(path, VisionFoundationConfig, "vision foundation")
    return vc


def build_config(vc: VisionFoundationConfig, steps: int | None = None) -> Config:
    """The composed pipeline config of the build: the base with ``vc.overrides``, rooted at ``vc.root``.

    Refuses a config that would not train a tower (a vision path set without ``init``, an ``init`` that holds no
    build, the tower frozen in ``pretrain``) and unknown objectives or dense targets."""
    extra = [f"pipeline.root={vc.root}", "pipeline.name=foundation-vision", f"tracking.experiment={EXPERIMENT}"]
    if steps:
        extra.append(f"pretrain.max_steps={steps}")
    if vc.init:
        extra.append(f"model.vision.path={vc.init}")
    cfg = compose(vc.base, [*vc.overrides, *extra])
    if vc.init:
        check_init("vision foundation build", "tower", vc.init, cfg.model.vision.path)
    elif cfg.model.vision.path:
        raise ConfigError(f"vision foundation build: model.vision.path={cfg.model.vision.path!r}; the build trains "
                          "a new tower from its config (add model.vision.path=null to overrides, or name a build "
                          "to go on training in `init`)")
    if vc.objective not in OBJECTIVES:
        raise ConfigError(f"vision foundation build: objective={vc.objective!r}; expected one of {OBJECTIVES}")
    from deco_core.train.dense import KEEP, TARGETS

    unknown = sorted(set(vc.targets) - set(TARGETS)) or ([] if vc.targets else ["(none)"])
    if unknown:
        raise ConfigError(f"vision foundation build: targets {unknown}; expected a non-empty list of {TARGETS}")
    if KEEP in vc.targets and not (vc.init and vc.objective == "dense"):
        raise ConfigError(f"vision foundation build: target {KEEP!r} keeps the starting tower's features; it needs "
                          "objective: dense and an `init` build to start from")
    if vc.objective == "dense" and not cfg.pretrain.max_steps:
        raise ConfigError("vision foundation build: objective dense needs pretrain.max_steps (its scenes are drawn "
                          "on the fly: there is no epoch to count)")
    if not cfg.pretrain.train_vision:
        raise ConfigError("vision foundation build: pretrain.train_vision=false; the build trains the tower in the "
                          "pretrain stage (add pretrain.train_vision=true to overrides)")
    return cfg


def manifest_of(vc: VisionFoundationConfig, cfg: Config, outputs: dict[str, Any]) -> dict[str, Any]:
    """``foundation.json``: how the tower was built and how far its loss fell (caption loss, or the dense
    objective's patch accuracies and box error)."""
    return {
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "steps": outputs.get("steps"), "wall_s": outputs.get("wall_s"),
        "final_loss": outputs.get("final_loss"), "val_loss": outputs.get("val_loss"),
        "mlflow_run": outputs.get("mlflow_run"), "patch_accuracy": outputs.get("patch_accuracy"),
        "patch_box_l1": outputs.get("patch_box_l1"), "keep_mse": outputs.get("keep_mse"), "build": asdict(vc),
        "vision": to_dict(cfg.model.vision),
        "projector": to_dict(cfg.model.projector) if vc.objective == "captions" else None,
        "parent": read_build(cfg.model.vision.path) if vc.init else None,  # the build this one went on from
        "train": {k: v for k, v in to_dict(cfg.pretrain).items() if k != "deepspeed_config"},
    }


def build(vc: VisionFoundationConfig, steps: int | None = None, out: Path | None = None) -> dict[str, Any]:
    """Run the whole build; returns the manifest written to ``<out>/vision/foundation.json``."""
    started = time.perf_counter()
    cfg = build_config(vc, steps)
    tower, outputs = train_dense(cfg, vc.targets) if vc.objective == "dense" else train_captions(cfg)
    manifest = manifest_of(vc, cfg, outputs)
    manifest["total_wall_s"] = round(time.perf_counter() - started, 1)
    final = publish([tower], manifest, out or Path(vc.out), name=vc.name)
    log.info("foundation vision tower written to %s (%s objective, %s steps, loss %s, %.0f s)", final, vc.objective,
             outputs.get("steps"), outputs.get("final_loss"), manifest["total_wall_s"])
    return manifest


def train_captions(cfg: Config) -> tuple[Any, dict[str, Any]]:
    """The pipeline's own prepare_data + pretrain stages on the dense captions -> (CLIPVisionModel, outputs)."""
    from deco_core.model.deco import DecoModel
    from pipelines.workflow.runner import Workflow

    workflow = Workflow(cfg)
    workflow.run(only=STAGES)
    outputs = workflow.load_state()["stages"]["pretrain"]["outputs"]
    return DecoModel.from_pretrained(outputs["model"]).vision.model, outputs


def train_dense(cfg: Config, targets: list[str]) -> tuple[Any, dict[str, Any]]:
    """A Ray Train + DeepSpeed job on per-patch attribute labels (``deco_core.train.dense``), tracked in MLflow
    -> (CLIPVisionModel, outputs). Batch, lr, schedule, steps and workers are the ``pretrain`` section's."""
    from mlflow import MlflowClient
    from transformers import CLIPVisionModel

    from deco_core.tracking import resolve_tracking_uri
    from deco_core.tracking.runs import get_or_create_run
    from deco_core.tracking.trackers import MlflowTracker
    from deco_core.train.dense import DenseLoopConfig, dense_loop_per_worker
    from deco_core.train.session import WorkerPlan, torch_trainer
    from deco_core.train.sources import ray_storage
    from deco_core.train.trainer import abs_storage
    from pipelines.ops.runtime import ensure_ray

    t = cfg.pretrain
    ensure_ray(cfg)
    uri = resolve_tracking_uri(cfg.tracking, cfg.pipeline.root)
    run_id = get_or_create_run(uri, EXPERIMENT, "foundation-vision-dense", cfg.pipeline.root)
    MlflowTracker(uri, run_id).log_params({
        "objective": "dense", "targets": ",".join(targets), "vision": to_dict(cfg.model.vision),
        "train": {k: v for k, v in to_dict(t).items() if k != "deepspeed_config"}})
    loop = DenseLoopConfig(cfg.model.vision, t, cfg.data.shapes, t.max_steps, t.seed, tuple(targets), uri, run_id)
    name = f"foundation-vision-dense-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"  # never resumes an older build
    started = time.perf_counter()
    client = MlflowClient(uri)
    try:
        result = torch_trainer(dense_loop_per_worker, {"loop": loop}, name,
                               WorkerPlan.of(cfg, t, abs_storage(ray_storage(cfg)), session=False)).fit()
        if result.checkpoint is None:
            raise RuntimeError(f"vision foundation build: the dense job {name} reported no tower checkpoint")
        with result.checkpoint.as_directory() as folder:
            tower = CLIPVisionModel.from_pretrained(folder)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    metrics = dict(result.metrics or {})
    outputs = {"steps": metrics.get("step"), "final_loss": metrics.get("loss"), "mlflow_run": run_id,
               "wall_s": round(time.perf_counter() - started, 1),
               "patch_accuracy": {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("patch_acc/")},
               "patch_box_l1": metrics.get("patch_box_l1"), "keep_mse": metrics.get("keep_mse")}
    return tower, outputs


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
