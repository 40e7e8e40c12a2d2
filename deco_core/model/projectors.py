"""Projector registry: `ProjectorConfig`, the `PROJECTORS` table, config validation and `build_projector`.

Every projector maps patch features [B, N, Dv] (CLS dropped, square grid) to [B, M, Dllm] and reports M via
`num_output_tokens(N)`. Implementations: projectors_pool.py (linear, mlp, deco), projectors_attention.py
(qformer, resampler), projectors_cabs.py (c-abstractor); shared base in projectors_base.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

from deco_core.model.projectors_attention import ProbAttention, QFormerProjector, ResamplerProjector
from deco_core.model.projectors_base import Projector, patch_grid, square_side
from deco_core.model.projectors_cabs import CAbstractorProjector
from deco_core.model.projectors_pool import (
    POOL_MODES,
    DecoProjector,
    LinearProjector,
    MLPProjector,
    adaptive_pool_matrix,
    pool_windows,
)

log = logging.getLogger(__name__)


@dataclass
class ProjectorConfig:
    """Which projector to build and its hyper-parameters (YAML group `projector/`)."""

    name: str = "deco"
    """Registry key: c-abstractor, deco, linear, mlp, qformer, resampler."""
    num_tokens: int = 16
    """M, tokens per image for compressive projectors (a perfect square for grid ones); linear/mlp ignore it."""
    mode: str = "avg"
    """deco pooling: "avg" (the paper) or "max"."""
    mlp_depth: int = 2
    """L: Linear then (L-1) x [GELU, Linear] in mlp and deco; 2 = LLaVA-1.5 mlp2x_gelu."""
    qformer_depth: int = 2
    """Q-Former layers (each: self-attention, cross-attention, FFN)."""
    qformer_width: int | None = None
    """Q-Former width W; None = the LLM width."""
    qformer_heads: int = 4
    """Attention heads in the Q-Former (must divide its width)."""
    resampler_width: int | None = None
    """Resampler width W (a multiple of 4); None = the LLM width."""
    resampler_heads: int = 4
    """Attention heads in the resampler (must divide its width)."""
    cabs_depth: int = 3
    """C-Abstractor conv blocks before and after the pool."""
    cabs_squeeze_excite: bool = False
    """Add squeeze-excitation to every C-Abstractor conv block."""
    dropout: float = 0.0
    """Dropout inside Q-Former / resampler attention and FFN."""


class ProjectorSpec(NamedTuple):
    """One registry row: the class to build and a one-line description."""

    cls: type[Projector]
    description: str


# fmt: off
PROJECTORS: dict[str, ProjectorSpec] = {
    "c-abstractor": ProjectorSpec(CAbstractorProjector, "Honeybee-style conv blocks, adaptive avg pool, conv blocks, SiLU MLP"),
    "deco":         ProjectorSpec(DecoProjector,        "DeCo: parameter-free 2D adaptive avg/max pool to √M x √M, then LLaVA MLP"),
    "linear":       ProjectorSpec(LinearProjector,      "LLaVA-1 Linear(Dv, Dllm) on every patch (M = N)"),
    "mlp":          ProjectorSpec(MLPProjector,         "LLaVA-1.5 mlp2x_gelu on every patch (M = N)"),
    "qformer":      ProjectorSpec(QFormerProjector,     "BLIP-2-style Q-Former: M learned queries, self+cross attention layers"),
    "resampler":    ProjectorSpec(ResamplerProjector,   "Qwen-VL-style resampler: one cross-attention with 2D sin-cos positions"),
}
# fmt: on


class UnknownProjectorError(KeyError, ValueError):
    """An unknown projector name; the message lists the valid ones (catchable as KeyError or ValueError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get_projector_spec(name: str) -> ProjectorSpec:
    """Registry lookup; raises UnknownProjectorError listing the valid names."""
    if name not in PROJECTORS:
        raise UnknownProjectorError(f"unknown projector {name!r}; valid: {', '.join(sorted(PROJECTORS))}")
    return PROJECTORS[name]


def _require(ok: bool, field: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"projector.{field}={value!r}: expected {expected}")


def _validate_fields(cfg: ProjectorConfig) -> None:
    """Ranges of the hyper-parameters that do not depend on the patch grid."""
    _require(cfg.mode in POOL_MODES, "mode", cfg.mode, f"one of {', '.join(POOL_MODES)}")
    for field, minimum in (("mlp_depth", 1), ("qformer_depth", 1), ("qformer_heads", 1), ("resampler_heads", 1),
                           ("cabs_depth", 0)):
        value = getattr(cfg, field)
        _require(isinstance(value, int) and value >= minimum, field, value, f"an integer >= {minimum}")
    for field in ("qformer_width", "resampler_width"):
        value = getattr(cfg, field)
        _require(value is None or (isinstance(value, int) and value >= 1), field, value,
                 "null (= LLM width) or a positive integer")
    _require(0.0 <= cfg.dropout < 1.0, "dropout", cfg.dropout, "a probability in [0, 1)")


def validate_projector_config(cfg: ProjectorConfig, num_patches: int) -> None:
    """Check `cfg` against the registry and an N-patch input; raises ValueError/KeyError naming field and value.

    Rules: known name; mode avg|max; sane depths/heads/widths; N a square grid (N = h*w + 1 hints at a CLS
    token left in); for compressive projectors 1 <= M <= N (M > N would upsample) and M a perfect square where
    the tokens form a grid (deco, resampler, c-abstractor).
    """
    spec = get_projector_spec(cfg.name)
    _validate_fields(cfg)
    patch_grid(num_patches)
    if not spec.cls.compressive:
        return
    m = cfg.num_tokens
    _require(isinstance(m, int) and m >= 1, "num_tokens", m, "a positive integer")
    if spec.cls.square_tokens:
        _require(square_side(m) is not None, "num_tokens", m,
                 f"a perfect square M = k*k (e.g. 16, 64, 144) for the {cfg.name} token grid")
    _require(m <= num_patches, "num_tokens", m,
             f"M <= num_patches={num_patches}; M > N would upsample the patch grid")


def build_projector(cfg: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int) -> Projector:
    """Validate `cfg` and build its projector for Dv=vision_dim -> Dllm=llm_dim on an N-patch grid.

    Works under `with torch.device("meta"):` for parameter counting without memory.
    """
    validate_projector_config(cfg, num_patches)
    projector = PROJECTORS[cfg.name].cls.from_config(cfg, vision_dim, llm_dim, num_patches)
    log.info("projector %s: %d patches -> %d tokens, %d -> %d, %.2fM parameters", cfg.name, num_patches,
             projector.num_output_tokens(num_patches), vision_dim, llm_dim, projector.num_parameters() / 1e6)
    return projector


__all__ = [
    "PROJECTORS",
    "CAbstractorProjector",
    "DecoProjector",
    "LinearProjector",
    "MLPProjector",
    "ProbAttention",
    "Projector",
    "ProjectorConfig",
    "ProjectorSpec",
    "QFormerProjector",
    "ResamplerProjector",
    "UnknownProjectorError",
    "adaptive_pool_matrix",
    "build_projector",
    "get_projector_spec",
    "patch_grid",
    "pool_windows",
    "validate_projector_config",
]
