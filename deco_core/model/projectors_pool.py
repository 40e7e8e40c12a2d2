"""Patch-level projectors: `linear` and `mlp` (one token per patch) and `deco` (2D adaptive pool, then the MLP).

Also the pool as a matrix: `adaptive_pool_matrix` gives P [M, N] with pool(X) == P @ X under PyTorch's
adaptive window rule, used by tests and by R-GAE as DeCo's fixed query-to-patch relevance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from deco_core.model.projector_config import POOL_MODES, DecoTraits, LinearTraits, MLPTraits
from deco_core.model.projectors_base import (
    Projector,
    build_mlp,
    check_compression,
    grid_to_tokens,
    patch_grid,
    square_side,
    tokens_to_grid,
)

if TYPE_CHECKING:
    from deco_core.model.projector_config import ProjectorConfig


def pool_windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """Half-open windows [start, end) of 1D adaptive pooling, PyTorch's rule.

    start = floor(i * n_in / n_out), end = ceil((i + 1) * n_in / n_out); e.g. 24 -> 16 gives
    [0,2) [1,3) [3,5) [4,6) ... (every third input used twice).
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"pool_windows: sizes must be positive, got n_in={n_in}, n_out={n_out}")
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def _axis_matrix(n_in: int, n_out: int, dtype: torch.dtype) -> Tensor:
    """Row-normalised 1D window indicator [n_out, n_in]."""
    a = torch.zeros(n_out, n_in, dtype=dtype)
    for i, (start, end) in enumerate(pool_windows(n_in, n_out)):
        a[i, start:end] = 1.0 / (end - start)
    return a


def adaptive_pool_matrix(in_h: int, in_w: int, out_h: int, out_w: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """P [out_h*out_w, in_h*in_w] with P[j, i] = 1/|Ω_j| for patch i in window Ω_j (row-major on both sides).

    A 2D window is the product of its row and column windows, so P = kron(A_h, A_w) with row-normalised
    1D indicators; every row sums to 1, column sums are uneven where windows overlap.
    """
    return torch.kron(_axis_matrix(in_h, out_h, dtype), _axis_matrix(in_w, out_w, dtype))


class MLPProjector(MLPTraits, Projector):
    """LLaVA-1.5 `mlp2x_gelu`: Linear, then (L-1) x [GELU, Linear] on every patch; M = N."""

    def __init__(self, vision_dim: int, llm_dim: int, mlp_depth: int = 2) -> None:
        super().__init__(vision_dim, llm_dim)
        self.mlp = build_mlp(vision_dim, llm_dim, mlp_depth)

    @classmethod
    def from_config(cls, cfg: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int) -> MLPProjector:
        return cls(vision_dim, llm_dim, cfg.mlp_depth)

    def num_output_tokens(self, num_patches: int) -> int:
        patch_grid(num_patches)
        return num_patches

    def query_to_patch(self, num_patches: int) -> Tensor:
        """Identity [N, N]: token j is patch j."""
        patch_grid(num_patches)
        return torch.eye(num_patches)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.mlp(x)  # (B, N, Dv) -> (B, N, Dllm)


class LinearProjector(LinearTraits, MLPProjector):
    """LLaVA-1 projector: one Linear(Dv, Dllm) per patch; same state-dict layout as `mlp` with depth 1."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__(vision_dim, llm_dim, mlp_depth=1)

    @classmethod
    def from_config(cls, cfg: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int) -> LinearProjector:
        return cls(vision_dim, llm_dim)


class DecoProjector(DecoTraits, Projector):
    """DeCo: parameter-free AdaptiveAvgPool2d((√M, √M)) in ViT space, then the LLaVA MLP on the M tokens.

    `mode="max"` swaps in AdaptiveMaxPool2d (the authors' `maxpool{L}_{M}` variant). The only parameters are
    `self.mlp`, laid out exactly like `MLPProjector.mlp`, so state dicts load across the two.
    """

    def __init__(self, vision_dim: int, llm_dim: int, num_tokens: int, mode: str = "avg", mlp_depth: int = 2) -> None:
        super().__init__(vision_dim, llm_dim)
        side = square_side(num_tokens)
        if side is None:
            raise ValueError(f"projector.num_tokens={num_tokens}: expected a perfect square M = k*k for the pool grid")
        if mode not in POOL_MODES:
            raise ValueError(f"projector.mode={mode!r}: expected one of {', '.join(POOL_MODES)}")
        self.num_tokens = num_tokens
        self.mode = mode
        self.side = side
        pool_cls = nn.AdaptiveAvgPool2d if mode == "avg" else nn.AdaptiveMaxPool2d
        self.pool = pool_cls((side, side))
        self.mlp = build_mlp(vision_dim, llm_dim, mlp_depth)

    @classmethod
    def from_config(cls, cfg: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int) -> DecoProjector:
        return cls(vision_dim, llm_dim, cfg.num_tokens, cfg.mode, cfg.mlp_depth)

    def num_output_tokens(self, num_patches: int) -> int:
        return check_compression(self.num_tokens, num_patches)

    def query_to_patch(self, num_patches: int) -> Tensor:
        """P [M, N] of the average pool (rows sum to 1).

        Max pooling picks a different patch per channel and per input, so it has no fixed [M, N] matrix:
        mode "max" raises NotImplementedError.
        """
        if self.mode != "avg":
            raise NotImplementedError(
                f"query_to_patch is defined for mode 'avg' only; mode {self.mode!r} selects a per-channel, "
                "input-dependent patch inside each window, so no fixed [M, N] matrix exists"
            )
        self.num_output_tokens(num_patches)
        h, w = patch_grid(num_patches)
        return adaptive_pool_matrix(h, w, self.side, self.side)

    def pool_tokens(self, x: Tensor) -> Tensor:
        """The parameter-free compression alone: (B, N, Dv) -> (B, M, Dv)."""
        h, w = self._check_input(x)
        self.num_output_tokens(h * w)
        grid = tokens_to_grid(x, h, w)  # (B, N, Dv) -> (B, Dv, h, w)
        pooled = self.pool(grid)  # (B, Dv, h, w) -> (B, Dv, √M, √M)
        return grid_to_tokens(pooled)  # (B, Dv, √M, √M) -> (B, M, Dv)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.pool_tokens(x))  # (B, M, Dv) -> (B, M, Dllm)
