"""Dense attribute pretraining of the vision tower (deco_core/train/dense.py): per-patch labels, the procedural
scene batches each worker draws, the heads' loss; and the build options that choose it (objective, targets, init)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from deco_core.data.shapes_config import ShapesConfig
from deco_core.data.shapes_scene import COLOURS, POSITIONS, SHAPES, Scene, ShapeObject
from deco_core.data.transforms import ImageTransform
from deco_core.model.vision import build_vision_tower
from deco_core.train.dense import ATTRIBUTES, BOX, DenseTower, patch_labels, scene_batch


def _object(shape: str, colour: str, size: str, cell: int, box: tuple[int, int, int, int]) -> ShapeObject:
    return ShapeObject(shape, colour, size, cell, (0, 0, 0), box[:2], box[2] - box[0], box)


def test_patches_whose_centre_lies_in_an_object_box_carry_its_attributes_and_the_rest_is_background():
    # 96 px, patch 8: patch centres at 4, 12, 20, ...; a box spanning pixels [8, 24) holds centres 12 and 20
    scene = Scene(96, (200, 200, 200), (
        _object("triangle", "blue", "large", 0, (8, 8, 24, 24)),
        _object("circle", "red", "small", 8, (72, 80, 84, 90)),
    ))
    labels = patch_labels(scene, patch=8)
    assert set(labels) == {*ATTRIBUTES, BOX} and labels[BOX].shape == (144, 4)
    assert all(labels[name].shape == (144,) for name in ATTRIBUTES)
    grid = {k: v.reshape(12, 12, *v.shape[1:]) for k, v in labels.items()}
    first = np.zeros((12, 12), bool)
    first[1:3, 1:3] = True
    second = np.zeros((12, 12), bool)
    second[10, 9] = True  # rows: centre 84 in [80, 90); columns: 76 in [72, 84), 84 is not (right is exclusive)
    assert (grid["shape"][first] == SHAPES.index("triangle") + 1).all()
    assert (grid["colour"][first] == COLOURS.index("blue") + 1).all()
    assert (grid["shape"][second] == SHAPES.index("circle") + 1).all() and grid["size"][10, 9] == 1
    assert grid["position"][1, 1] == POSITIONS.index("top left") + 1 and grid["position"][10, 9] == 9
    assert np.allclose(grid[BOX][1, 2], [8 / 96, 8 / 96, 24 / 96, 24 / 96])  # the object's box, on every patch of it
    background = ~(first | second)
    assert all((grid[name][background] == 0).all() for name in ATTRIBUTES) and (grid[BOX][background] == 0).all()


def test_scene_batches_are_deterministic_per_rank_and_disjoint_across_ranks(tiny_cfg):
    vision = tiny_cfg.model.vision
    transform = ImageTransform.from_vision_config(vision)
    pixels, labels = scene_batch(ShapesConfig(), transform, vision.patch_size, seed=0, rank=0, start=0, size=4)
    assert pixels.shape == (4, 3, 96, 96) and pixels.dtype == torch.float32
    assert all(labels[k].shape == (4, 144) and labels[k].dtype == torch.int64 for k in ATTRIBUTES)
    assert labels[BOX].shape == (4, 144, 4) and labels[BOX].dtype == torch.float32
    assert (labels["shape"] > 0).any(dim=1).all()  # every scene holds at least one object
    again, _ = scene_batch(ShapesConfig(), transform, vision.patch_size, seed=0, rank=0, start=0, size=4)
    other, _ = scene_batch(ShapesConfig(), transform, vision.patch_size, seed=0, rank=1, start=0, size=4)
    assert torch.equal(pixels, again) and not torch.equal(pixels, other)


def test_the_heads_loss_falls_on_a_fixed_batch(tiny_cfg):
    torch.manual_seed(0)
    vision = replace(tiny_cfg.model.vision, path=None)
    model = DenseTower(build_vision_tower(vision))
    pixels, labels = scene_batch(ShapesConfig(), ImageTransform.from_vision_config(vision), vision.patch_size,
                                 seed=0, rank=0, start=0, size=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first, metrics = model(pixels, labels)
    assert set(metrics) == {*(f"patch_acc/{k}" for k in ATTRIBUTES), "patch_box_l1"} and first.ndim == 0
    for _ in range(25):
        loss, _ = model(pixels, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first.item()


def test_only_the_chosen_targets_get_heads(tiny_cfg):
    vision = replace(tiny_cfg.model.vision, path=None)
    model = DenseTower(build_vision_tower(vision), targets=("shape", "colour"))
    assert set(model.heads) == {"shape", "colour"} and model.box is None
    pixels, labels = scene_batch(ShapesConfig(), ImageTransform.from_vision_config(vision), vision.patch_size,
                                 seed=0, rank=0, start=0, size=2)
    _, metrics = model(pixels, labels)
    assert set(metrics) == {"patch_acc/shape", "patch_acc/colour"}


@pytest.mark.parametrize("objective", ["captions", "dense"])
def test_both_objectives_compose_and_unknown_objectives_or_targets_are_refused(objective):
    from deco_core.config import ConfigError
    from pipelines.foundation_vision import VisionFoundationConfig, build_config

    build_config(VisionFoundationConfig(objective=objective))
    with pytest.raises(ConfigError, match="objective='contrastive'.*captions.*dense"):
        build_config(VisionFoundationConfig(objective="contrastive"))
    with pytest.raises(ConfigError, match=r"targets \['depth'\]; expected .*'shape'"):
        build_config(VisionFoundationConfig(objective=objective, targets=["shape", "depth"]))
    with pytest.raises(ConfigError, match=r"targets \['\(none\)'\]"):
        build_config(VisionFoundationConfig(objective=objective, targets=[]))
    if objective == "dense":  # scenes drawn on the fly: no epoch to count steps by
        overrides = [*VisionFoundationConfig().overrides, "pretrain.max_steps=null"]
        with pytest.raises(ConfigError, match="objective dense needs pretrain.max_steps"):
            build_config(VisionFoundationConfig(objective=objective, overrides=overrides))


def test_a_second_phase_goes_on_from_a_tower_build_and_refuses_a_folder_without_one(tmp_path, tiny_cfg):
    from deco_core.config import ConfigError
    from pipelines.foundation_vision import VisionFoundationConfig, build_config

    with pytest.raises(ConfigError, match=r"init='.*empty'.*holds no tower build"):
        build_config(VisionFoundationConfig(objective="dense", init=str(tmp_path / "empty")))
    build_vision_tower(replace(tiny_cfg.model.vision, path=None)).model.save_pretrained(tmp_path / "base")
    cfg = build_config(VisionFoundationConfig(objective="dense", init=str(tmp_path / "base")))
    assert cfg.model.vision.path == str(tmp_path / "base")


def test_keep_anchors_the_tower_to_a_frozen_copy_of_where_it_started(tiny_cfg):
    """`keep`: zero while the tower equals its starting copy, positive once it moves; the copy never trains."""
    torch.manual_seed(0)
    vision = replace(tiny_cfg.model.vision, path=None)
    model = DenseTower(build_vision_tower(vision), targets=("shape", "keep"))
    pixels, labels = scene_batch(ShapesConfig(), ImageTransform.from_vision_config(vision), vision.patch_size,
                                 seed=0, rank=0, start=0, size=4)
    _, metrics = model(pixels, labels)
    assert set(metrics) == {"patch_acc/shape", "keep_mse"} and metrics["keep_mse"].item() == pytest.approx(0, abs=1e-6)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = [p.clone() for p in model.teacher.parameters()]
    for _ in range(3):
        loss, metrics = model(pixels, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["keep_mse"].item() > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.teacher.parameters(), strict=True))


def test_keep_needs_a_dense_build_that_starts_from_a_tower():
    from deco_core.config import ConfigError
    from pipelines.foundation_vision import VisionFoundationConfig, build_config

    with pytest.raises(ConfigError, match="target 'keep'.*objective: dense and an `init`"):
        build_config(VisionFoundationConfig(objective="dense", targets=["shape", "keep"]))
