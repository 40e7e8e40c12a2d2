"""The tower probe: what a frozen vision tower's features make recoverable, read out by small probes.

Two readouts on held-out ShapesWorld objects (scenes of a split of their own, never train / val / eval):

| readout | input                                                                  | target            | score                  |
|---------|------------------------------------------------------------------------|-------------------|------------------------|
| box     | the DeCo token (M = tokens² average pool) that holds the object centre | normalised box    | Acc@IoU 0.5, small / large |
| shape   | the selected layer averaged over the patches under the object's box    | circle / square / triangle | accuracy vs majority |
| shape_token | the DeCo token that holds the object centre (what DeCo passes on)  | circle / square / triangle | accuracy vs majority |

The box readout is a 2-layer MLP, the shape readouts linear classifiers, all fitted on 80 % of the objects.
``--tokens 12`` reads a single patch (no pooling). A score near the majority / near 0 says the features do not
carry it for any projector to pass on.

Run: ``python -m pipelines.experiments.tower_probe --vision artifacts/foundation/tiny/vision`` (``--vision none``:
a random tower of conf/model/tiny.yaml's sizes) -> ``runs/tower_probe/tower_probe.json``; ~30 s on 2 threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

SPLIT = "tower_probe"
SMALL_SIDE = 0.2  # a box side below this fraction of the image is a small object (ShapesConfig: small <= 0.17)


@dataclasses.dataclass
class ObjectRows:
    """One row per object: box-readout input [n, D], shape-readout input [n, D], box [n, 4], shape id, small."""

    token: torch.Tensor
    patches: torch.Tensor
    box: torch.Tensor
    shape: torch.Tensor
    small: torch.Tensor


def object_rows(feats: torch.Tensor, scenes: list[Any], tokens: int) -> ObjectRows:
    """feats [B, G*G, D] of the scenes' images -> per-object readout inputs and targets."""
    from deco_core.data.shapes_scene import SHAPES
    from deco_core.train.dense import patches_under

    b, n, d = feats.shape
    grid = int(round(n**0.5))
    if grid * grid != n or not 1 <= tokens <= grid:
        raise ValueError(f"tokens={tokens}: expected 1..{grid} for a {grid}x{grid} patch grid ({n} patches)")
    pooled = torch.nn.functional.adaptive_avg_pool2d(feats.transpose(1, 2).reshape(b, d, grid, grid), tokens)
    rows: dict[str, list[Any]] = {k: [] for k in ("token", "patches", "box", "shape", "small")}
    for i, scene in enumerate(scenes):
        for k, obj in enumerate(scene.objects):
            box = scene.norm_box(k)  # [x1, y1, x2, y2] in [0, 1]
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            rows["token"].append(pooled[i, :, min(int(cy * tokens), tokens - 1), min(int(cx * tokens), tokens - 1)])
            inside = torch.from_numpy(patches_under(obj.box_px, grid, scene.image_size // grid))  # [G, G]
            if not inside.any():  # an object between patch centres: the patch under its centre
                inside[min(int(cy * grid), grid - 1), min(int(cx * grid), grid - 1)] = True
            rows["patches"].append(feats[i][inside.reshape(-1)].mean(0))
            rows["box"].append(torch.tensor(box))
            rows["shape"].append(SHAPES.index(obj.shape))
            rows["small"].append(box[2] - box[0] < SMALL_SIDE)
    return ObjectRows(torch.stack(rows["token"]), torch.stack(rows["patches"]), torch.stack(rows["box"]),
                      torch.tensor(rows["shape"]), torch.tensor(rows["small"]))


def _standardise(x: torch.Tensor, ntr: int) -> torch.Tensor:
    mean, std = x[:ntr].mean(0), x[:ntr].std(0) + 1e-6
    return (x - mean) / std


def _fit(model: torch.nn.Module, x: torch.Tensor, loss_fn: Any, target: torch.Tensor, steps: int) -> torch.nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), target).backward()
        opt.step()
    return model


def box_iou_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise IoU of xyxy boxes [n, 4] -> [n], by the REC metric's own ``box_iou``."""
    from deco_core.eval.metrics_rec import box_iou

    return torch.tensor([box_iou(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)])


def _shape_readout(x: torch.Tensor, shape: torch.Tensor, ntr: int, steps: int) -> float:
    """A linear shape classifier fitted on rows [:ntr] of x [n, D] -> its accuracy on the rest."""
    lin = _fit(torch.nn.Linear(x.shape[1], int(shape.max()) + 1), x[:ntr], torch.nn.functional.cross_entropy,
               shape[:ntr], steps)
    with torch.no_grad():
        return float((lin(x[ntr:]).argmax(1) == shape[ntr:]).float().mean())


def readouts(rows: ObjectRows, steps: int = 1500, seed: int = 0) -> dict[str, float]:
    """Fit the readouts on the first 80 % of the objects and score them on the rest."""
    n = len(rows.box)
    ntr = int(0.8 * n)
    if ntr < 10 or n - ntr < 10:
        raise ValueError(f"{n} objects: expected >= 50 for an 80/20 split (raise --scenes)")
    torch.manual_seed(seed)
    d = rows.token.shape[1]
    x = _standardise(rows.token, ntr)
    mlp = torch.nn.Sequential(torch.nn.Linear(d, 256), torch.nn.GELU(), torch.nn.Linear(256, 4))
    _fit(mlp, x[:ntr], torch.nn.functional.l1_loss, rows.box[:ntr], steps)
    with torch.no_grad():
        hit = box_iou_rows(mlp(x[ntr:]), rows.box[ntr:]) >= 0.5  # [n - ntr]
    small = rows.small[ntr:]
    shape_acc = _shape_readout(_standardise(rows.patches, ntr), rows.shape, ntr, steps)
    shape_token_acc = _shape_readout(x, rows.shape, ntr, steps)
    majority = torch.bincount(rows.shape[:ntr]).argmax()
    return {"box_acc_small": float(hit[small].float().mean()) if small.any() else float("nan"),
            "box_acc_large": float(hit[~small].float().mean()) if (~small).any() else float("nan"),
            "shape_accuracy": shape_acc, "shape_token_accuracy": shape_token_acc,
            "shape_majority": float((rows.shape[ntr:] == majority).float().mean()),
            "n_test": float(n - ntr), "n_test_small": float(small.sum())}


def run(vision: str | None, tokens: int, scenes: int, seed: int = 7, steps: int = 1500) -> dict[str, Any]:
    """Render `scenes` held-out scenes, run the frozen tower, fit and score the readouts."""
    from deco_core.config import compose
    from deco_core.data.shapes_scene import ShapesConfig, render_png, sample_rngs, sample_scene
    from deco_core.data.transforms import ImageTransform
    from deco_core.model.vision import build_vision_tower

    cfg = compose("pipeline/tiny", [f"model.vision.path={vision or 'null'}"])
    tower = build_vision_tower(cfg.model.vision).eval()
    transform = ImageTransform.from_vision_config(cfg.model.vision)
    shapes: ShapesConfig = cfg.data.shapes  # the scenes the workflow trains and scores on
    drawn = [sample_scene(sample_rngs(seed, SPLIT, "objects", i)[0], shapes) for i in range(scenes)]
    pixels = torch.from_numpy(np.stack([transform(Image.open(io.BytesIO(render_png(s))).convert("RGB"))
                                        for s in drawn]))  # [S, 3, H, W]
    with torch.no_grad():
        feats = torch.cat([tower(pixels[i : i + 100]) for i in range(0, scenes, 100)])  # [S, G*G, D]
    result = readouts(object_rows(feats, drawn, tokens), steps=steps)
    log.info("tower %s, %d tokens: box Acc@0.5 small %.3f large %.3f; shape %.3f from the patches, %.3f from the "
             "token (majority %.3f)", vision or "random", tokens**2, result["box_acc_small"], result["box_acc_large"],
             result["shape_accuracy"], result["shape_token_accuracy"], result["shape_majority"])
    return {"vision": vision, "tokens": tokens**2, "scenes": scenes, "seed": seed, **result}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vision", default="artifacts/foundation/tiny/vision", help="tower folder, or 'none' (random)")
    p.add_argument("--tokens", type=int, default=4, help="pooled grid side (4 -> M = 16; the patch grid side: no pool)")
    p.add_argument("--scenes", type=int, default=1500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/tower_probe"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(a.threads)
    result = run(None if a.vision == "none" else a.vision, a.tokens, a.scenes)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "tower_probe.json"
    path.write_text(json.dumps(result, indent=2))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
