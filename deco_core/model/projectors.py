"""Projector registry: the `PROJECTORS` table of torch classes and `build_projector`.

Every projector maps patch features [B, N, Dv] (CLS dropped, square grid) to [B, M, Dllm] and reports M via
`num_output_tokens(N)`. Implementations: projectors_pool.py (linear, mlp, deco), projectors_attention.py
(qformer, resampler), projectors_cabs.py (c-abstractor); shared base in projectors_base.py. What each projector
declares (name, token count, R-GAE relevance method) and the config validation are torch-free, in
projector_config.py; they are re-exported here.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from deco_core.model.projector_config import (
    PROJECTOR_TRAITS,
    ProjectorConfig,
    UnknownProjectorError,
    get_projector_traits,
    patch_grid,
    projector_num_tokens,
    validate_projector_config,
)
from deco_core.model.projectors_attention import ProbAttention, QFormerProjector, ResamplerProjector
from deco_core.model.projectors_base import Projector
from deco_core.model.projectors_cabs import CAbstractorProjector
from deco_core.model.projectors_pool import (
    DecoProjector,
    LinearProjector,
    MLPProjector,
    adaptive_pool_matrix,
    pool_windows,
)

log = logging.getLogger(__name__)


class ProjectorSpec(NamedTuple):
    """One registry row: the class to build and a one-line description (the class's own declaration)."""

    cls: type[Projector]
    description: str


_CLASSES: tuple[type[Projector], ...] = (
    CAbstractorProjector, DecoProjector, LinearProjector, MLPProjector, QFormerProjector, ResamplerProjector,
)
PROJECTORS: dict[str, ProjectorSpec] = {c.name: ProjectorSpec(c, c.description) for c in _CLASSES}


def _check_registry() -> None:
    """Every declared projector has exactly one torch class, built on its declaration (run at import)."""
    if set(PROJECTORS) != set(PROJECTOR_TRAITS):
        raise TypeError(f"projector classes {sorted(PROJECTORS)} != declarations {sorted(PROJECTOR_TRAITS)}")
    for name, spec in PROJECTORS.items():
        if not issubclass(spec.cls, PROJECTOR_TRAITS[name]):
            raise TypeError(f"{spec.cls.__name__} must inherit {PROJECTOR_TRAITS[name].__name__}")


_check_registry()


def get_projector_spec(name: str) -> ProjectorSpec:
    """Registry lookup; raises UnknownProjectorError listing the valid names."""
    get_projector_traits(name)
    return PROJECTORS[name]


def build_projector(cfg: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int) -> Projector:
    """Validate `cfg` and build its projector for Dv=vision_dim -> Dllm=llm_dim on an N-patch grid.

    Works under `with torch.device("meta"):` for parameter counting without memory. To know M alone, use
    `projector_num_tokens(cfg, N)`: it builds nothing.
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
    "projector_num_tokens",
    "validate_projector_config",
]
