"""Shared pieces of the projector registry: the `Projector` base class, the MLP builder and grid reshapes.

A projector maps ViT patch features x [B, N, Dv] (CLS already dropped, N = h*w on a square grid) to
LLM-space tokens [B, M, Dllm]. Concrete projectors live in projectors_{pool,attention,cabs}.py; the torch-free
patch-grid checks (`patch_grid`, `square_side`, `check_compression`) live in projector_config.py and are
re-exported here.
"""

from __future__ import annotations

from torch import Tensor, nn

from deco_core.model.projector_config import (
    ProjectorConfig,
    ProjectorTraits,
    check_compression,
    patch_grid,
    square_side,
)


def build_mlp(in_dim: int, out_dim: int, depth: int, act: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """Linear(in, out) then (depth-1) x [act, Linear(out, out)]; depth 2 with GELU is LLaVA-1.5 `mlp2x_gelu`.

    Parameter names are `0.weight`, `2.weight`, ... so weights copy between every projector built on it.
    """
    if depth < 1:
        raise ValueError(f"projector.mlp_depth={depth}: expected an integer >= 1")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [act(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class Projector(ProjectorTraits, nn.Module):
    """Base class: x [B, N, Dv] -> [B, M, Dllm], with token accounting and optional attention capture.

    A concrete projector also inherits its torch-free declaration (`ProjectorTraits` in projector_config.py:
    name, compressive, square_tokens, the R-GAE relevance method, `output_tokens(cfg, N)`), e.g.
    `class DecoProjector(DecoTraits, Projector)`.

    Attention projectors record post-softmax attention in `attention_maps` (a fresh list per forward) when
    `capture_attention` is True; other projectors leave it empty.
    """

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        for key, value in (("vision_dim", vision_dim), ("llm_dim", llm_dim)):
            if value < 1:
                raise ValueError(f"projector {key}={value}: expected a positive width")
        self.vision_dim = vision_dim
        self.llm_dim = llm_dim
        self.capture_attention = False
        self.attention_maps: list[dict] = []

    @classmethod
    def from_config(cls, cfg: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int) -> Projector:
        """Build from a ProjectorConfig (fields already validated by the registry)."""
        raise NotImplementedError

    def num_output_tokens(self, num_patches: int) -> int:
        """Number of tokens M the projector emits for N input patches (validates N)."""
        raise NotImplementedError

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Total parameter count (works on the meta device)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def query_to_patch(self, num_patches: int) -> Tensor:
        """Fixed [M, N] map from output tokens to patches (R_qp of R-GAE), where the projector has one."""
        raise NotImplementedError(
            f"{type(self).__name__} has no fixed query-to-patch matrix; its relevance is input-dependent "
            "(set capture_attention = True and propagate attention_maps with R-GAE)"
        )

    def _check_input(self, x: Tensor) -> tuple[int, int]:
        """Validate x [B, N, Dv] and return the (h, w) patch grid."""
        if x.dim() != 3:
            raise ValueError(f"projector input: expected [B, N, Dv] features, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.vision_dim:
            raise ValueError(
                f"projector input: feature width {x.shape[-1]} != vision_dim={self.vision_dim} "
                f"(shape {tuple(x.shape)})"
            )
        return patch_grid(x.shape[1])

    def _record_attention(self, kind: str, layer: int, attn: Tensor) -> None:
        """Keep post-softmax attention [B, heads, M, K] (and its gradient after backward) when capturing."""
        if not self.capture_attention:
            return
        if attn.requires_grad:
            attn.retain_grad()
        self.attention_maps.append({"kind": kind, "layer": layer, "attn": attn})


def grid_to_tokens(x: Tensor) -> Tensor:
    """Row-major flatten: (B, D, h, w) -> (B, h*w, D); token j is cell (j // w, j % w)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_grid(x: Tensor, h: int, w: int) -> Tensor:
    """Row-major reshape: (B, h*w, D) -> (B, D, h, w); patch n sits at (n // w, n % w)."""
    b, n, d = x.shape
    return x.transpose(1, 2).reshape(b, d, h, w)


def truncated_normal_(t: Tensor, std: float = 0.02) -> Tensor:
    """In-place truncated-normal init (±2 std) used for learned queries and position embeddings."""
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


__all__ = [
    "Projector",
    "build_mlp",
    "check_compression",
    "grid_to_tokens",
    "patch_grid",
    "square_side",
    "tokens_to_grid",
    "truncated_normal_",
]

