"""Dense attribute pretraining of a vision tower: the worker side of ``make foundation-vision``'s ``dense`` objective.

Every patch of a ShapesWorld image is labelled with the shape, colour, size and grid cell of the object whose tight
box holds the patch centre (0 = background) and with that object's box, and the tower learns to predict them from
its selected layer through a linear head per attribute (cross-entropy) and one for the box (L1 on the object's
patches), an FCOS-style dense target. It is the stand-in for the supervised/contrastive pretraining that gives a real CLIP
tower its part-level features: a tower trained on captions through a frozen LLM learns colour (linear probe 0.99) but
barely shape (0.65 vs 0.44 majority), which caps every shape question downstream.

Scenes are drawn procedurally inside each worker (``sample_rngs(seed, "tower", "rank<r>", index)``: deterministic,
disjoint per rank, never the eval split), so the build needs no shards. ``dense_loop_per_worker`` is the Ray Train
entry point; the engine is DeepSpeed's (``build_engine``), as in every training stage.
"""

from __future__ import annotations

import copy
import io
import logging
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from deco_core.config import ShapesConfig, TrainConfig, VisionConfig
from deco_core.data.shapes_scene import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    render_png,
    sample_rngs,
    sample_scene,
)
from deco_core.data.transforms import ImageTransform

log = logging.getLogger(__name__)

# attribute -> its values; label 0 is background, value i is label i + 1
ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}
BOX = "box"  # [G * G, 4] normalised xyxy box of the patch's object (zeros on background)
KEEP = "keep"  # the starting tower's own features (a frozen copy): what an `init` build knew stays readable
LABELS: tuple[str, ...] = (*ATTRIBUTES, BOX)  # the per-patch labels a scene gives
TARGETS: tuple[str, ...] = (*LABELS, KEEP)  # what a build may train (its `targets`)
SPLIT = "tower"  # the scenes of the tower build: a split of their own, never "train" / "val" / "eval"


def patches_under(box_px: tuple[int, int, int, int], grid: int, patch: int) -> np.ndarray:
    """[G, G] bool: the patches whose centre lies inside the pixel box (left, top, right, bottom; right/bottom
    exclusive)."""
    centres = np.arange(grid) * patch + patch / 2.0  # [G] pixel centre of each patch row/column
    left, top, right, bottom = box_px
    return ((centres >= top) & (centres < bottom))[:, None] & ((centres >= left) & (centres < right))[None, :]


def patch_labels(scene: Scene, patch: int) -> dict[str, np.ndarray]:
    """{attribute: [G * G] int64, "box": [G * G, 4] float32} for the row-major patch grid, G = image_size // patch."""
    grid = scene.image_size // patch
    labels = {name: np.zeros((grid, grid), np.int64) for name in ATTRIBUTES}
    boxes = np.zeros((grid, grid, 4), np.float32)
    for index, obj in enumerate(scene.objects):
        inside = patches_under(obj.box_px, grid, patch)  # [G, G]
        for name, values in ATTRIBUTES.items():
            labels[name][inside] = values.index(obj.attr(name)) + 1
        boxes[inside] = scene.norm_box(index)
    return {**{name: grid_labels.reshape(-1) for name, grid_labels in labels.items()}, BOX: boxes.reshape(-1, 4)}


def scene_batch(shapes: ShapesConfig, transform: ImageTransform, patch: int, seed: int, rank: int, start: int,
                size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scenes start..start+size-1 of this rank -> (pixels [B, 3, S, S], {attribute: [B, G * G], "box": [B, G * G, 4]})."""
    pixels, labels = [], {name: [] for name in LABELS}
    for index in range(start, start + size):
        scene = sample_scene(sample_rngs(seed, SPLIT, f"rank{rank}", index)[0], shapes)
        pixels.append(transform(Image.open(io.BytesIO(render_png(scene))).convert("RGB")))
        for name, value in patch_labels(scene, patch).items():
            labels[name].append(value)
    return torch.from_numpy(np.stack(pixels)), {k: torch.from_numpy(np.stack(v)) for k, v in labels.items()}


class DenseTower(nn.Module):
    """A vision tower with one linear head per attribute and a box head on its selected layer's patch features;
    with ``keep``, a frozen copy of the starting tower whose features the trained one must still match."""

    def __init__(self, tower: nn.Module, targets: tuple[str, ...] = LABELS) -> None:
        super().__init__()
        self.tower = tower
        self.heads = nn.ModuleDict({name: nn.Linear(tower.hidden_size, len(values) + 1)
                                    for name, values in ATTRIBUTES.items() if name in targets})
        self.box = nn.Linear(tower.hidden_size, 4) if BOX in targets else None
        self.teacher = copy.deepcopy(tower).requires_grad_(False).eval() if KEEP in targets else None

    def train(self, mode: bool = True) -> DenseTower:
        """Train mode for the tower and heads; the frozen starting copy stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def keep_loss(self, pixel_values: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Mean squared distance of feats [B, N, Dv] to the frozen starting tower's, over its per-dimension
        variance: 1.0 = as far as features that ignore the image."""
        with torch.no_grad():
            target = self.teacher(pixel_values).float()  # [B, N, Dv]
        var = target.flatten(0, 1).var(0).clamp_min(1e-6)  # [Dv]
        return ((feats.float() - target) ** 2 / var).mean()

    def forward(self, pixel_values: torch.Tensor, labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Cross-entropy summed over attributes (mean over patches) + the box L1 (sum over the 4 coordinates, mean
        over object patches); and the metrics: each attribute's patch accuracy and the box's mean absolute error."""
        feats = self.tower(pixel_values.to(self.tower.model.dtype))  # [B, N, Dv] (bf16 under a bf16 engine)
        loss, metrics = feats.new_zeros((), dtype=torch.float32), {}
        for name, head in self.heads.items():
            logits = head(feats)  # [B, N, 1 + values]
            loss = loss + nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels[name].flatten())
            metrics[f"patch_acc/{name}"] = (logits.argmax(-1) == labels[name]).float().mean().detach()
        if self.teacher is not None:
            keep = self.keep_loss(pixel_values.to(self.tower.model.dtype), feats)
            loss = loss + keep
            metrics["keep_mse"] = keep.detach()
        if self.box is None:
            return loss, metrics
        on_object = labels["shape"] > 0  # [B, N]
        error = (self.box(feats).float() - labels[BOX]).abs()[on_object]  # [P, 4] over the object patches
        if error.numel():
            loss = loss + error.sum(-1).mean()
            metrics["patch_box_l1"] = error.mean().detach()
        return loss, metrics


@dataclass
class DenseLoopConfig:
    """What every worker needs: the tower's config, the train section (batch, lr, DeepSpeed), the scenes."""

    vision: VisionConfig
    train: TrainConfig
    shapes: ShapesConfig
    steps: int
    seed: int
    targets: tuple[str, ...] = TARGETS  # which heads train
    tracking_uri: str | None = None
    run_id: str | None = None


def dense_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config = {"loop": DenseLoopConfig}``; rank 0 reports the trained tower as a checkpoint."""
    import ray.train

    from deco_core.model.vision import build_vision_tower
    from deco_core.tracking.trackers import make_tracker
    from deco_core.train.checkpoint import consolidated_state_dict
    from deco_core.train.deepspeed import build_engine
    from deco_core.train.loop import torch_threads

    lc: DenseLoopConfig = config["loop"]
    t = lc.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(torch_threads(t, ctx.get_local_world_size()))
    torch.manual_seed(lc.seed)
    tower = build_vision_tower(lc.vision)
    model = DenseTower(tower, lc.targets)
    engine = build_engine(model, t, world, use_gpu=t.use_gpu, total_steps=lc.steps)
    transform = ImageTransform.from_vision_config(lc.vision)
    tracker = make_tracker(rank, lc.tracking_uri, lc.run_id)
    accum, index, metrics = t.grad_accum_steps(world), 0, {}
    for step in range(1, lc.steps + 1):
        for _ in range(accum):
            pixels, labels = scene_batch(lc.shapes, transform, lc.vision.patch_size, lc.seed, rank, index,
                                         t.micro_batch_size)
            index += t.micro_batch_size
            loss, measured = engine(pixels.to(engine.device), {k: v.to(engine.device) for k, v in labels.items()})
            engine.backward(loss)
            engine.step()
        if step % t.log_every == 0 or step == lc.steps:
            metrics = {"step": step, "loss": loss.item(), **{k: float(v) for k, v in measured.items()}}
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=step)
            if rank == 0 and step % (t.log_every * 10) == 0:
                log.info("dense tower step %d/%d loss %.3f %s", step, lc.steps, metrics["loss"],
                         {k: round(float(v), 3) for k, v in measured.items()})
    state = consolidated_state_dict(engine, model, rank)  # every rank takes part (ZeRO-3 gathers)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if state is not None:
            prefix = "tower.model."
            tower.model.save_pretrained(tmp, state_dict={k[len(prefix):]: v for k, v in state.items()
                                                         if k.startswith(prefix)})
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
    tracker.finish(status=None)
