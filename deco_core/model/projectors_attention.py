"""Learned-query projectors with inspectable attention: `qformer` (BLIP-2 style) and `resampler` (Qwen-VL style).

Attention is computed with an explicit softmax (`ProbAttention`) so that, with `capture_attention = True`,
every post-softmax map and its gradient are kept in `attention_maps` for R-GAE relevance analysis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from deco_core.model.projector_config import QFormerTraits, ResamplerTraits
from deco_core.model.projectors_base import Projector, check_compression, square_side, truncated_normal_

if TYPE_CHECKING:
    from deco_core.model.projector_config import ProjectorConfig


class ProbAttention(nn.Module):
    """Multi-head attention that returns its post-softmax probabilities: (B, M, W) x (B, K, Wk) -> (B, M, W)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"projector heads={heads}: expected a positive divisor of the attention width {dim}")
        kv_dim = dim if kv_dim is None else kv_dim
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, n, W) -> (B, H, n, W/H)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (output (B, M, W), probabilities (B, H, M, K))."""
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, M, K)
        probs = scores.float().softmax(dim=-1).to(q.dtype)
        out = self.drop(probs) @ v  # (B, H, M, W/H)
        b, _, m, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, m, -1)), probs


class QFormerLayer(nn.Module):
    """Pre-norm block: queries self-attend, cross-attend to patches, then an FFN (4x width, GELU)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = ProbAttention(width, heads, dropout=dropout)
        self.norm_cross = nn.LayerNorm(width)
        self.cross_attn = ProbAttention(width, heads, dropout=dropout)
        self.norm_ffn = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, q: Tensor, kv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, M, W), kv (B, N, W) -> (q', self-attn (B, H, M, M), cross-attn (B, H, M, N))."""
        h = self.norm_self(q)
        out, a_self = self.self_attn(h, h, h)
        q = q + self.drop(out)
        out, a_cross = self.cross_attn(self.norm_cross(q), kv, kv)
        q = q + self.drop(out)
        q = q + self.drop(self.ffn(self.norm_ffn(q)))
        return q, a_self, a_cross


class QFormerProjector(QFormerTraits, Projector):
    """BLIP-2-style Q-Former: M learned queries, `depth` x [self-attn, cross-attn to patches, FFN], Linear out.

    Differences from BLIP-2, on purpose: pre-norm residual blocks (BLIP-2 is post-norm BERT) for stable training
    from scratch; cross-attention in every layer (BLIP-2: every 2nd); no text path. Patches are projected
    Dv -> W by Linear + LayerNorm. The queries form no grid, so M need not be a perfect square (BLIP-2 uses 32).
    Captured maps per layer i: {"kind": "self", "attn": (B, H, M, M)} then {"kind": "cross", "attn": (B, H, M, N)}.
    """

    def __init__(self, vision_dim: int, llm_dim: int, num_tokens: int, depth: int = 2, width: int | None = None,
                 heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__(vision_dim, llm_dim)
        width = llm_dim if width is None else width
        if depth < 1:
            raise ValueError(f"projector.qformer_depth={depth}: expected an integer >= 1")
        self.num_tokens = num_tokens
        self.queries = nn.Parameter(truncated_normal_(torch.empty(num_tokens, width)))  # (M, W)
        self.kv_proj = nn.Linear(vision_dim, width)
        self.kv_norm = nn.LayerNorm(width)
        self.layers = nn.ModuleList(QFormerLayer(width, heads, dropout) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width)
        self.out_proj = nn.Linear(width, llm_dim)

    @classmethod
    def from_config(cls, cfg: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int) -> QFormerProjector:
        return cls(vision_dim, llm_dim, cfg.num_tokens, cfg.qformer_depth, cfg.qformer_width, cfg.qformer_heads,
                   cfg.dropout)

    def num_output_tokens(self, num_patches: int) -> int:
        return check_compression(self.num_tokens, num_patches)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self._check_input(x)
        self.num_output_tokens(h * w)
        self.attention_maps = []
        kv = self.kv_norm(self.kv_proj(x))  # (B, N, Dv) -> (B, N, W)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, M, W)
        for i, layer in enumerate(self.layers):
            q, a_self, a_cross = layer(q, kv)
            self._record_attention("self", i, a_self)
            self._record_attention("cross", i, a_cross)
        return self.out_proj(self.final_norm(q))  # (B, M, W) -> (B, M, Dllm)


def sincos_2d(rows: Tensor, cols: Tensor, dim: int) -> Tensor:
    """Fixed 2D sin-cos embedding of a row-major grid: (h,), (w,) coordinates -> (h*w, dim).

    The first dim/2 channels encode the row coordinate, the rest the column; each half is
    [sin(p * ω_k), cos(p * ω_k)] with ω_k = 10000^(-k / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"resampler width={dim}: expected a multiple of 4 for the 2D sin-cos position embedding")
    quarter = dim // 4
    omega = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64, device=rows.device) / quarter)

    def encode(p: Tensor) -> Tensor:  # (n,) -> (n, dim/2)
        angles = p.double()[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    r, c = encode(rows), encode(cols)  # (h, dim/2), (w, dim/2)
    h, w = r.shape[0], c.shape[0]
    grid = torch.cat([r[:, None].expand(h, w, -1), c[None, :].expand(h, w, -1)], dim=-1)  # (h, w, dim)
    return grid.reshape(h * w, dim).float()


def cell_centres(cells: int, patches: int, device: torch.device | None = None) -> Tensor:
    """Centres of `cells` equal cells spanning `patches` patches along one axis, in patch units.

    (i + 0.5) * patches / cells - 0.5: with cells == patches this is 0, 1, 2, ..., so query and key
    positions share one frame and a query's embedding is near those of the patches it covers.
    """
    return (torch.arange(cells, dtype=torch.float64, device=device) + 0.5) * patches / cells - 0.5


class ResamplerProjector(ResamplerTraits, Projector):
    """Qwen-VL-style resampler: ONE cross-attention from M learned queries to the patches, then Linear out.

    Keys/values: Linear(Dv, W) + LayerNorm; fixed 2D sin-cos positions are added to the queries (√M grid)
    and to the keys (√N grid), both in patch units (Qwen-VL interpolates the query table instead); values
    carry no position. Output: LayerNorm, then Linear(W, Dllm). W defaults to Dllm.
    Captured map: {"kind": "cross", "layer": 0, "attn": (B, H, M, N)}.
    """

    def __init__(self, vision_dim: int, llm_dim: int, num_tokens: int, width: int | None = None, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__(vision_dim, llm_dim)
        width = llm_dim if width is None else width
        side = square_side(num_tokens)
        if side is None:
            raise ValueError(f"projector.num_tokens={num_tokens}: expected a perfect square M = k*k for the query grid")
        if width % 4:
            raise ValueError(f"projector resampler width={width}: expected a multiple of 4 (2D sin-cos positions)")
        self.num_tokens = num_tokens
        self.side = side
        self.queries = nn.Parameter(truncated_normal_(torch.empty(num_tokens, width)))  # (M, W)
        self.kv_proj = nn.Linear(vision_dim, width)
        self.kv_norm = nn.LayerNorm(width)
        self.q_norm = nn.LayerNorm(width)
        self.attn = ProbAttention(width, heads, dropout=dropout)
        self.post_norm = nn.LayerNorm(width)
        self.out_proj = nn.Linear(width, llm_dim)

    @classmethod
    def from_config(cls, cfg: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int) -> ResamplerProjector:
        return cls(vision_dim, llm_dim, cfg.num_tokens, cfg.resampler_width, cfg.resampler_heads, cfg.dropout)

    def num_output_tokens(self, num_patches: int) -> int:
        return check_compression(self.num_tokens, num_patches)

    def positions(self, h: int, w: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """(query positions (M, W), key positions (h*w, W)) in the shared patch-unit frame."""
        width = self.queries.shape[1]
        q_pos = sincos_2d(cell_centres(self.side, h, device), cell_centres(self.side, w, device), width)
        k_pos = sincos_2d(torch.arange(h, device=device), torch.arange(w, device=device), width)
        return q_pos, k_pos

    def forward(self, x: Tensor) -> Tensor:
        h, w = self._check_input(x)
        self.num_output_tokens(h * w)
        self.attention_maps = []
        q_pos, k_pos = (p.to(x.dtype) for p in self.positions(h, w, x.device))
        kv = self.kv_norm(self.kv_proj(x))  # (B, N, Dv) -> (B, N, W)
        q = self.q_norm(self.queries) + q_pos  # (M, W)
        q = q.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, M, W)
        out, probs = self.attn(q, kv + k_pos, kv)  # (B, M, W), (B, H, M, N)
        self._record_attention("cross", 0, probs)
        return self.out_proj(self.post_norm(out))  # (B, M, W) -> (B, M, Dllm)
