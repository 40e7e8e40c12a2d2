"""Vision tower: a transformers CLIPVisionModel (built from config or loaded from a path) that returns patch
features from a chosen hidden layer with the CLS token dropped: pixel_values [B, 3, H, W] -> [B, N, Dv]."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from deco_core.model.builds import check_sizes, read_build

if TYPE_CHECKING:
    from deco_core.config import VisionConfig


log = logging.getLogger(__name__)


def tiny_clip_config(cfg: VisionConfig) -> CLIPVisionConfig:
    """A CLIPVisionConfig built from our fields (random init; no download)."""
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=3,
    )


class VisionTower(nn.Module):
    """CLIP ViT feature extractor.

    ``forward`` takes hidden_states[select_layer] (-2 = output of the penultimate block, no post-LayerNorm,
    as LLaVA-1.5) and drops CLS: [B, 1 + N, Dv] -> [B, N, Dv].
    """

    def __init__(self, model: CLIPVisionModel, select_layer: int = -2) -> None:
        super().__init__()
        self.model = model
        self.select_layer = select_layer
        n_hidden = model.config.num_hidden_layers + 1  # embeddings + every block
        if not -n_hidden <= select_layer < n_hidden:
            raise ValueError(f"vision select_layer={select_layer} out of range for {n_hidden} hidden states")

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def grid_size(self) -> int:
        return int(self.model.config.image_size // self.model.config.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        feats = out.hidden_states[self.select_layer]  # [B, 1 + N, Dv]
        feats = feats[:, 1:]  # drop CLS -> [B, N, Dv]
        n = feats.shape[1]
        if math.isqrt(n) ** 2 != n:
            raise ValueError(f"vision tower produced {n} patch tokens: the patch grid must be square (h == w)")
        return feats


SIZE_KEYS = ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")


def build_vision_tower(cfg: VisionConfig) -> VisionTower:
    """Load a CLIP vision checkpoint from ``cfg.path`` or build a random tiny one from the config fields."""
    if cfg.path:
        built = read_build(cfg.path)
        if built is not None:  # a foundation build: the config must ask for the sizes it was trained with
            check_sizes(cfg, "vision", SIZE_KEYS, built, "make foundation-vision")
        log.info("loading vision tower from %s", cfg.path)
        model = CLIPVisionModel.from_pretrained(cfg.path)
    else:
        model = CLIPVisionModel(tiny_clip_config(cfg))
    return VisionTower(model, cfg.select_layer)


def vision_tower_from_hf_config(config: CLIPVisionConfig, select_layer: int) -> VisionTower:
    """Rebuild an (uninitialised) tower from a saved HF config; weights are loaded by the caller."""
    return VisionTower(CLIPVisionModel(config), select_layer)
