"""What every projector declares, torch-free: `ProjectorConfig`, each projector's traits and config validation.

A projector maps ViT patch features [B, N, Dv] (CLS dropped, N = h*w on a square grid) to LLM tokens
[B, M, Dllm]. Each projector declares, in a `ProjectorTraits` subclass here, its registry name, whether M is
set by `num_tokens` (compressive) and must be a perfect square (square_tokens), its output token count M as a
function of the config (`output_tokens(cfg, N)`), and how R-GAE gets its query-to-patch relevance R_qp
(`relevance`, one of `RELEVANCE_METHODS`). The torch modules in projectors_{pool,attention,cabs}.py inherit
their traits class, so the declaration lives with the class, and composing or validating a config never
imports torch (`deco_core.config` reads only this module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

POOL_MODES = ("avg", "max")

# fmt: off
RELEVANCE_METHODS: dict[str, str] = {  # how R-GAE obtains R_qp [M, N] (deco_core.analysis.relevance_q2p)
    "pool-matrix":     "the fixed adaptive average-pool matrix P [M, N]",
    "identity":        "token j is patch j: the identity [N, N]",
    "attention-rules": "Chefer rules over the captured self/cross attention, target-dependent",
    "max-routing":     "max pooling: the share of channels whose window maximum comes from each patch",
    "grad-x-input":    "gradient x input per output token (no attention, no fixed matrix)",
}
# fmt: on


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


# ------------------------------------------------------------------------------------------ patch grid
def square_side(n: int) -> int | None:
    """Return k when n == k*k (n >= 1), else None."""
    if n < 1:
        return None
    k = math.isqrt(n)
    return k if k * k == n else None


def patch_grid(num_patches: int) -> tuple[int, int]:
    """(h, w) of the row-major patch grid behind N patches; raises ValueError unless N = h*w with h == w.

    A count of k*k + 1 (e.g. 577 = 24*24 + 1) gets a hint that the CLS token was not dropped.
    """
    side = square_side(num_patches)
    if side is not None:
        return side, side
    cls_side = square_side(num_patches - 1)
    if cls_side is not None:
        raise ValueError(
            f"num_patches N={num_patches} = {cls_side}*{cls_side} + 1: the CLS token seems to still be present; "
            f"drop it (features[:, 1:]) so the projector sees the {cls_side}x{cls_side} patch grid"
        )
    raise ValueError(
        f"num_patches N={num_patches} is not a perfect square: the patch grid must be square "
        f"(h == w, N = h*w, e.g. 576 = 24*24)"
    )


def check_compression(num_tokens: int, num_patches: int) -> int:
    """Validate the N-patch grid and M <= N; return M."""
    patch_grid(num_patches)
    if num_tokens > num_patches:
        raise ValueError(
            f"projector.num_tokens={num_tokens} > num_patches={num_patches}: the projector would upsample; "
            "expected M <= N"
        )
    return num_tokens


# ------------------------------------------------------------------------------------------ traits
class ProjectorTraits:
    """A projector's declaration, readable without torch; every registered projector class inherits one.

    Class attributes:
        name: registry key (empty on abstract bases).
        description: one line for `deco` help and the README table.
        compressive: M is set by `num_tokens` (else M = N).
        square_tokens: the M output tokens form a sqrt(M) x sqrt(M) grid, so M must be a perfect square.
        relevance: how R-GAE obtains R_qp, a key of `RELEVANCE_METHODS`; checked when the class is defined.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    compressive: ClassVar[bool] = False
    square_tokens: ClassVar[bool] = False
    relevance: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name and cls.relevance not in RELEVANCE_METHODS:
            raise TypeError(f"projector {cls.name!r} ({cls.__name__}) declares relevance={cls.relevance!r}; "
                            f"expected one of {', '.join(RELEVANCE_METHODS)}")

    @classmethod
    def output_tokens(cls, cfg: ProjectorConfig, num_patches: int) -> int:
        """M for `cfg` on an N-patch grid, without building the projector: num_tokens if compressive, else N."""
        if cls.compressive:
            return check_compression(cfg.num_tokens, num_patches)
        patch_grid(num_patches)
        return num_patches

    @classmethod
    def relevance_method(cls, cfg: ProjectorConfig) -> str:
        """The R_qp method for this configuration (the class's `relevance` unless a setting changes it)."""
        return cls.relevance


class LinearTraits(ProjectorTraits):
    name = "linear"
    description = "LLaVA-1 Linear(Dv, Dllm) on every patch (M = N)"
    relevance = "identity"


class MLPTraits(ProjectorTraits):
    name = "mlp"
    description = "LLaVA-1.5 mlp2x_gelu on every patch (M = N)"
    relevance = "identity"


class DecoTraits(ProjectorTraits):
    name = "deco"
    description = "DeCo: parameter-free 2D adaptive avg/max pool to √M x √M, then LLaVA MLP"
    compressive = True
    square_tokens = True
    relevance = "pool-matrix"

    @classmethod
    def relevance_method(cls, cfg: ProjectorConfig) -> str:
        """Average pooling has the fixed matrix P; max pooling routes each channel to one patch per input."""
        return "max-routing" if cfg.mode == "max" else cls.relevance


class QFormerTraits(ProjectorTraits):
    name = "qformer"
    description = "BLIP-2-style Q-Former: M learned queries, self+cross attention layers"
    compressive = True
    relevance = "attention-rules"


class ResamplerTraits(ProjectorTraits):
    name = "resampler"
    description = "Qwen-VL-style resampler: one cross-attention with 2D sin-cos positions"
    compressive = True
    square_tokens = True
    relevance = "attention-rules"


class CAbstractorTraits(ProjectorTraits):
    name = "c-abstractor"
    description = "Honeybee-style conv blocks, adaptive avg pool, conv blocks, SiLU MLP"
    compressive = True
    square_tokens = True
    relevance = "grad-x-input"


PROJECTOR_TRAITS: dict[str, type[ProjectorTraits]] = {
    t.name: t for t in sorted((CAbstractorTraits, DecoTraits, LinearTraits, MLPTraits, QFormerTraits, ResamplerTraits),
                              key=lambda t: t.name)
}
"""Registry name -> declaration; `deco_core.model.projectors.PROJECTORS` maps the same names to torch classes."""


class UnknownProjectorError(KeyError, ValueError):
    """An unknown projector name; the message lists the valid ones (catchable as KeyError or ValueError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get_projector_traits(name: str) -> type[ProjectorTraits]:
    """Declaration lookup; raises UnknownProjectorError listing the valid names."""
    if name not in PROJECTOR_TRAITS:
        raise UnknownProjectorError(f"unknown projector {name!r}; valid: {', '.join(sorted(PROJECTOR_TRAITS))}")
    return PROJECTOR_TRAITS[name]


# ------------------------------------------------------------------------------------------ validation
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
    traits = get_projector_traits(cfg.name)
    _validate_fields(cfg)
    patch_grid(num_patches)
    if not traits.compressive:
        return
    m = cfg.num_tokens
    _require(isinstance(m, int) and m >= 1, "num_tokens", m, "a positive integer")
    if traits.square_tokens:
        _require(square_side(m) is not None, "num_tokens", m,
                 f"a perfect square M = k*k (e.g. 16, 64, 144) for the {cfg.name} token grid")
    _require(m <= num_patches, "num_tokens", m,
             f"M <= num_patches={num_patches}; M > N would upsample the patch grid")


def projector_num_tokens(cfg: ProjectorConfig, num_patches: int) -> int:
    """M, the image tokens the configured projector emits for N patches (validated; nothing is built)."""
    validate_projector_config(cfg, num_patches)
    return get_projector_traits(cfg.name).output_tokens(cfg, num_patches)


__all__ = [
    "POOL_MODES",
    "PROJECTOR_TRAITS",
    "RELEVANCE_METHODS",
    "ProjectorConfig",
    "ProjectorTraits",
    "UnknownProjectorError",
    "check_compression",
    "get_projector_traits",
    "patch_grid",
    "projector_num_tokens",
    "square_side",
    "validate_projector_config",
]
