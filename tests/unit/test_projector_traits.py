"""Every registered projector declares its R-GAE relevance method and its token count, and both are true."""

from __future__ import annotations

import pytest
import torch

from deco_core.analysis.relevance_q2p import supported_methods
from deco_core.model.projector_config import (
    PROJECTOR_TRAITS,
    RELEVANCE_METHODS,
    ProjectorConfig,
    ProjectorTraits,
    projector_num_tokens,
)
from deco_core.model.projectors import PROJECTORS, build_projector


@pytest.mark.parametrize("name", sorted(PROJECTORS))
def test_every_projector_declares_a_supported_relevance_method(name: str) -> None:
    """Each registered class names a relevance method that relevance_q2p implements, for every pool mode."""
    cls = PROJECTORS[name].cls
    assert issubclass(cls, PROJECTOR_TRAITS[name]) and cls.name == name
    assert cls.relevance in RELEVANCE_METHODS
    for mode in ("avg", "max"):
        assert cls.relevance_method(ProjectorConfig(name=name, mode=mode)) in supported_methods()
    assert set(supported_methods()) == set(RELEVANCE_METHODS)


@pytest.mark.parametrize("num_patches", [144, 64])
@pytest.mark.parametrize("num_tokens", [4, 16])
@pytest.mark.parametrize("name", sorted(PROJECTORS))
def test_declared_token_count_equals_the_built_output_length(
    name: str, num_tokens: int, num_patches: int
) -> None:
    """`projector_num_tokens(cfg, N)` (nothing built) equals M of the built projector's output [B, M, Dllm]."""
    cfg = ProjectorConfig(name=name, num_tokens=num_tokens)
    declared = projector_num_tokens(cfg, num_patches)
    projector = build_projector(cfg, 8, 12, num_patches)
    assert projector(torch.randn(1, num_patches, 8)).shape[1] == declared
    assert projector.num_output_tokens(num_patches) == declared


def test_a_projector_without_a_relevance_method_is_refused_at_definition() -> None:
    """Declaring a projector name without a known relevance method fails when the class is defined."""
    with pytest.raises(TypeError, match="relevance"):
        type("NoRelevance", (ProjectorTraits,), {"name": "no-relevance"})
    with pytest.raises(TypeError, match="relevance"):
        type("BadRelevance", (ProjectorTraits,), {"name": "bad", "relevance": "saliency"})
