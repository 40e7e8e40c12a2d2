"""The tower probe reads the right token and patches for each object, scores boxes by IoU, and its readouts
recover what the features carry (and nothing when they carry nothing)."""

from __future__ import annotations

import pytest
import torch

from deco_core.data.shapes_scene import SHAPES, ShapesConfig, sample_rngs, sample_scene
from pipelines.experiments import tower_probe as tp

GRID = 12


def _scenes(n: int) -> list:
    return [sample_scene(sample_rngs(3, tp.SPLIT, "test", i)[0], ShapesConfig()) for i in range(n)]


def _index_feats(n: int) -> torch.Tensor:
    """[n, 144, 3]: each patch's row, column and linear index as its features."""
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    one = torch.stack([rows.reshape(-1), cols.reshape(-1), torch.arange(GRID * GRID)], dim=1).float()
    return one.expand(n, -1, -1).clone()


def test_object_rows_take_the_token_under_the_centre_and_the_patches_under_the_box():
    scenes = _scenes(6)
    rows = tp.object_rows(_index_feats(6), scenes, tokens=4)
    objects = [(s, k) for s in scenes for k in range(len(s.objects))]
    assert rows.token.shape == (len(objects), 3) and rows.box.shape == (len(objects), 4)
    centres = (torch.arange(GRID) + 0.5) / GRID
    for j, (scene, k) in enumerate(objects):
        box = scene.norm_box(k)
        r, c = int((box[1] + box[3]) / 2 * 4), int((box[0] + box[2]) / 2 * 4)
        assert rows.token[j, 0].item() == pytest.approx(3 * r + 1)  # mean row of that 3x3 block
        assert rows.token[j, 1].item() == pytest.approx(3 * c + 1)
        inside = [i * GRID + jj for i in range(GRID) for jj in range(GRID)
                  if box[1] <= centres[i] < box[3] and box[0] <= centres[jj] < box[2]]
        if inside:
            assert rows.patches[j, 2].item() == pytest.approx(sum(inside) / len(inside))
        assert rows.shape[j].item() == SHAPES.index(scene.objects[k].shape)
        assert bool(rows.small[j]) == (box[2] - box[0] < tp.SMALL_SIDE)


def test_object_rows_refuse_a_pool_larger_than_the_grid():
    with pytest.raises(ValueError, match="tokens=13"):
        tp.object_rows(_index_feats(1), _scenes(1), tokens=13)


def test_box_iou_rows():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.7, 0.7], [0.0, 0.0, 0.5, 0.25]])
    assert tp.box_iou_rows(a, b).tolist() == pytest.approx([1.0, 0.0, 0.5])


def _rows(token: torch.Tensor, patches: torch.Tensor, box: torch.Tensor, shape: torch.Tensor) -> tp.ObjectRows:
    return tp.ObjectRows(token, patches, box, shape, (box[:, 2] - box[:, 0]) < tp.SMALL_SIDE)


def test_readouts_recover_what_the_features_carry_and_not_more():
    g = torch.Generator().manual_seed(0)
    n = 300
    xy = torch.rand(n, 2, generator=g) * 0.6
    side = torch.where(torch.rand(n, generator=g) < 0.5, 0.15, 0.3)
    box = torch.stack([xy[:, 0], xy[:, 1], xy[:, 0] + side, xy[:, 1] + side], dim=1)  # [n, 4]
    shape = torch.randint(0, 3, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(shape, 3).float()  # [n, 3]
    informative = _rows(box, onehot + 0.01 * torch.randn(n, 3, generator=g), box, shape)
    good = tp.readouts(informative, steps=400)
    assert good["box_acc_small"] > 0.8 and good["box_acc_large"] > 0.8
    assert good["shape_accuracy"] > 0.95 and good["n_test"] == 60
    assert good["shape_token_accuracy"] < 0.6  # the token holds the box only: shape is in the patches
    noise = _rows(torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g), box, shape)
    bad = tp.readouts(noise, steps=400)
    assert bad["box_acc_small"] < 0.3 and bad["shape_accuracy"] < 0.6 and bad["shape_token_accuracy"] < 0.6
    token_shape = _rows(torch.cat([box, onehot], dim=1), torch.randn(n, 3, generator=g), box, shape)
    assert tp.readouts(token_shape, steps=400)["shape_token_accuracy"] > 0.95


def test_readouts_refuse_too_few_objects():
    box = torch.tensor([[0.1, 0.1, 0.3, 0.3]] * 20)
    with pytest.raises(ValueError, match="20 objects"):
        tp.readouts(_rows(box, box, box, torch.zeros(20, dtype=torch.long)))
