"""Honeybee-style C-Abstractor (`c-abstractor`), kept small: conv blocks around an adaptive average pool.

learned patch positions -> `depth` residual conv blocks -> AdaptiveAvgPool2d(√M) -> `depth` residual conv blocks
-> row-major flatten -> Linear, SiLU, Linear. Honeybee's RegStage bottleneck blocks are replaced by plain
3x3 conv blocks (conv, channel LayerNorm, SiLU, optional squeeze-excitation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from deco_core.model.projector_config import CAbstractorTraits
from deco_core.model.projectors_base import (
    Projector,
    build_mlp,
    check_compression,
    grid_to_tokens,
    patch_grid,
    square_side,
    tokens_to_grid,
    truncated_normal_,
)

if TYPE_CHECKING:
    from deco_core.model.projector_config import ProjectorConfig


class ChannelNorm(nn.Module):
    """LayerNorm over channels at every position: (B, C, h, w) -> (B, C, h, w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    """Channel gating from the global mean: x * sigmoid(W2 SiLU(W1 mean(x)))."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class ConvBlock(nn.Module):
    """Residual block x + SE?(SiLU(norm(conv3x3(x)))) on (B, C, h, w)."""

    def __init__(self, channels: int, squeeze_excite: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm = ChannelNorm(channels)
        self.act = nn.SiLU()
        self.se = SqueezeExcite(channels) if squeeze_excite else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.se(self.act(self.norm(self.conv(x))))


class CAbstractorProjector(CAbstractorTraits, Projector):
    """C-Abstractor: locality-preserving conv abstraction around a √M x √M adaptive average pool.

    The learned position embedding is sized for the build-time grid, so inputs must have exactly
    `num_patches` patches.
    """

    def __init__(self, vision_dim: int, llm_dim: int, num_tokens: int, num_patches: int, depth: int = 3,
                 squeeze_excite: bool = False) -> None:
        super().__init__(vision_dim, llm_dim)
        side = square_side(num_tokens)
        if side is None:
            raise ValueError(f"projector.num_tokens={num_tokens}: expected a perfect square M = k*k for the pool grid")
        if depth < 0:
            raise ValueError(f"projector.cabs_depth={depth}: expected an integer >= 0")
        check_compression(num_tokens, num_patches)
        self.num_tokens = num_tokens
        self.num_patches = num_patches
        self.pos_embed = nn.Parameter(truncated_normal_(torch.empty(1, num_patches, vision_dim)))  # (1, N, Dv)
        self.pre = nn.Sequential(*(ConvBlock(vision_dim, squeeze_excite) for _ in range(depth)))
        self.pool = nn.AdaptiveAvgPool2d((side, side))
        self.post = nn.Sequential(*(ConvBlock(vision_dim, squeeze_excite) for _ in range(depth)))
        self.readout = build_mlp(vision_dim, llm_dim, 2, act=nn.SiLU)

    @classmethod
    def from_config(cls, cfg: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int) -> CAbstractorProjector:
        return cls(vision_dim, llm_dim, cfg.num_tokens, num_patches, cfg.cabs_depth, cfg.cabs_squeeze_excite)

    def num_output_tokens(self, num_patches: int) -> int:
        patch_grid(num_patches)
        if num_patches != self.num_patches:
            raise ValueError(
                f"c-abstractor built for num_patches={self.num_patches} (learned positions) got N={num_patches}; "
                "rebuild the projector for this patch grid"
            )
        return self.num_tokens

    def forward(self, x: Tensor) -> Tensor:
        h, w = self._check_input(x)
        self.num_output_tokens(h * w)
        grid = tokens_to_grid(x + self.pos_embed, h, w)  # (B, N, Dv) -> (B, Dv, h, w)
        grid = self.post(self.pool(self.pre(grid)))  # (B, Dv, h, w) -> (B, Dv, √M, √M)
        return self.readout(grid_to_tokens(grid))  # (B, M, Dv) -> (B, M, Dllm)
