"""Unit tests for the projector registry: shapes, DeCo pooling arithmetic, MLP parity, errors, attention capture."""

from __future__ import annotations

import logging

import pytest
import torch

from deco_core.model.projectors import (
    PROJECTORS,
    DecoProjector,
    ProjectorConfig,
    UnknownProjectorError,
    adaptive_pool_matrix,
    build_projector,
    pool_windows,
    validate_projector_config,
)
from deco_core.model.projectors_attention import ResamplerProjector

DV, DLLM = 8, 12
log = logging.getLogger(__name__)


def build(name: str, num_tokens: int = 16, num_patches: int = 144, **kw: object):
    """A tiny projector from the registry (Dv=8, Dllm=12)."""
    torch.manual_seed(0)
    return build_projector(ProjectorConfig(name=name, num_tokens=num_tokens, **kw), DV, DLLM, num_patches)


def grid_features(h: int, w: int, d: int = DV) -> torch.Tensor:
    """Features [1, h*w, d] whose value at patch (r, c), channel k is 10*r + c + 100*k."""
    r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    base = (10 * r + c).reshape(1, h * w, 1).float()
    return base + 100 * torch.arange(d).float()


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("num_patches", [144, 64])
@pytest.mark.parametrize("num_tokens", [4, 9, 16, 36])
@pytest.mark.parametrize("name", sorted(PROJECTORS))
def test_output_shape(name: str, num_tokens: int, num_patches: int) -> None:
    """Every projector maps [B, N, Dv] to [B, M, Dllm] with M = num_output_tokens(N) (M = N for linear/mlp)."""
    proj = build(name, num_tokens, num_patches)
    y = proj(torch.randn(2, num_patches, DV))
    expected_m = num_patches if name in ("linear", "mlp") else num_tokens
    assert proj.num_output_tokens(num_patches) == expected_m
    assert y.shape == (2, expected_m, DLLM)
    assert torch.isfinite(y).all()


# ------------------------------------------------------------------------------------------ pooling arithmetic
def test_deco_divisible_window_means() -> None:
    """A 4x4 grid pooled to 2x2 gives the hand-computed means of the four 2x2 blocks."""
    x = grid_features(4, 4)  # values 10r + c
    pooled = build("deco", 4, 16).pool_tokens(x)[0]  # (4, Dv)
    assert torch.equal(pooled[:, 0], torch.tensor([5.5, 7.5, 25.5, 27.5]))
    torch.testing.assert_close(pooled[:, 3], pooled[:, 0] + 300)


def test_deco_overlapping_window_means_5_to_3() -> None:
    """A 5x5 grid pooled to 3x3 uses windows [0,2) [1,4) [3,5) per axis and returns their hand-computed means."""
    assert pool_windows(5, 3) == [(0, 2), (1, 4), (3, 5)]
    x = grid_features(5, 5)  # value 10r + c; window mean = 10*mean(rows) + mean(cols); means 0.5, 2, 3.5
    expected = torch.tensor([[5.5, 7.0, 8.5], [20.5, 22.0, 23.5], [35.5, 37.0, 38.5]])
    pooled = build("deco", 9, 25).pool_tokens(x)[0, :, 0].reshape(3, 3)
    torch.testing.assert_close(pooled, expected)


def test_windows_24_to_16() -> None:
    """24 -> 16 pooling uses size-2 windows at stride 1.5, so every third row/column is used twice."""
    windows = pool_windows(24, 16)
    assert windows[:5] == [(0, 2), (1, 3), (3, 5), (4, 6), (6, 8)]
    assert all(end - start == 2 for start, end in windows)
    uses = torch.zeros(24)
    for start, end in windows:
        uses[start:end] += 1
    assert torch.equal(uses.nonzero().flatten(), torch.arange(24))
    assert (uses == 2).nonzero().flatten().tolist() == list(range(1, 24, 3))


@pytest.mark.parametrize(("side_in", "side_out"), [(24, 16), (24, 12), (24, 10), (5, 3), (16, 12), (12, 3), (8, 8)])
def test_pool_equals_matrix(side_in: int, side_out: int) -> None:
    """pool(X) == P @ X, and every row of P sums to 1, for divisible and overlapping windows."""
    proj = build("deco", side_out**2, side_in**2)
    x = torch.randn(2, side_in**2, DV, dtype=torch.float64)
    proj.double()
    p = proj.query_to_patch(side_in**2).double()
    assert p.shape == (side_out**2, side_in**2)
    torch.testing.assert_close(proj.pool_tokens(x), p @ x)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(side_out**2, dtype=torch.float64))
    assert torch.equal(adaptive_pool_matrix(side_in, side_in, side_out, side_out), proj.query_to_patch(side_in**2))


def test_pool_matrix_columns_uneven_when_overlapping() -> None:
    """With overlapping windows (24 -> 16) some patches weigh more than others in P's column sums."""
    cols = adaptive_pool_matrix(24, 24, 16, 16).sum(dim=0)
    assert cols.max() > cols.min()


def test_max_mode_is_window_max() -> None:
    """Max mode returns, per channel, the maximum over each adaptive window (5x5 -> 3x3, overlapping)."""
    proj = build("deco", 9, 25, mode="max")
    x = torch.randn(2, 25, DV)
    grid = x.reshape(2, 5, 5, DV)
    windows = pool_windows(5, 3)
    expected = torch.stack([grid[:, r0:r1, c0:c1].amax(dim=(1, 2)) for r0, r1 in windows for c0, c1 in windows], 1)
    torch.testing.assert_close(proj.pool_tokens(x), expected)


def test_query_to_patch_identity_and_max_error() -> None:
    """linear/mlp query-to-patch is the identity; deco max mode refuses with NotImplementedError."""
    assert torch.equal(build("mlp").query_to_patch(64), torch.eye(64))
    assert torch.equal(build("linear").query_to_patch(64), torch.eye(64))
    with pytest.raises(NotImplementedError, match="mode 'avg' only"):
        build("deco", mode="max").query_to_patch(144)
    with pytest.raises(NotImplementedError, match="attention_maps"):
        build("qformer").query_to_patch(144)


# ------------------------------------------------------------------------------------------ parameters
def test_deco_parameters_are_the_mlp() -> None:
    """DeCo's only parameters are its MLP, with the same names and count as the mlp projector."""
    deco, mlp = build("deco"), build("mlp")
    names = [n for n, _ in deco.named_parameters()]
    assert names == [n for n, _ in mlp.named_parameters()]
    assert all(n.startswith("mlp.") for n in names)
    assert deco.num_parameters() == mlp.num_parameters() == (DV * DLLM + DLLM) + (DLLM * DLLM + DLLM)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_deco_with_m_equal_n_matches_mlp(depth: int) -> None:
    """DeCo with M = N is exactly the MLP once weights are copied across with load_state_dict."""
    deco = build("deco", 64, 64, mlp_depth=depth)
    mlp = build("mlp", num_patches=64, mlp_depth=depth)
    mlp.load_state_dict(deco.state_dict(), strict=True)
    x = torch.randn(3, 64, DV)
    torch.testing.assert_close(deco(x), mlp(x))


def test_llava_scale_parameter_counts() -> None:
    """At Dv=1024 -> Dllm=4096 (meta device) deco = mlp = 20,979,712 and L=1 / linear = 4,198,400."""
    with torch.device("meta"):
        counts = {
            name: build_projector(ProjectorConfig(name=name, num_tokens=144), 1024, 4096, 576).num_parameters()
            for name in PROJECTORS
        }
        deco_l1 = build_projector(ProjectorConfig(num_tokens=144, mlp_depth=1), 1024, 4096, 576).num_parameters()
    log.info("projector parameters at 1024 -> 4096, M=144: %s", counts)
    assert counts["deco"] == counts["mlp"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096 == 20_979_712
    assert counts["linear"] == deco_l1 == 4_198_400
    assert min(counts["qformer"], counts["resampler"], counts["c-abstractor"]) > counts["deco"]


def test_parameter_counts_match_numel() -> None:
    """num_parameters() equals the summed numel of each projector's parameters, and trainable_only follows requires_grad."""
    for name in PROJECTORS:
        proj = build(name)
        assert proj.num_parameters() == sum(p.numel() for p in proj.parameters()) > 0
        proj.requires_grad_(False)
        assert proj.num_parameters(trainable_only=True) == 0


# ------------------------------------------------------------------------------------------ errors
def test_unknown_name_lists_valid_names() -> None:
    """An unknown name raises (as KeyError and ValueError) listing every valid projector name."""
    msg = "unknown projector 'avgpol'; valid: c-abstractor, deco, linear, mlp, qformer, resampler"
    with pytest.raises(KeyError) as info:
        build("avgpol")
    assert isinstance(info.value, UnknownProjectorError) and isinstance(info.value, ValueError)
    assert str(info.value) == msg
    with pytest.raises(ValueError, match="valid: c-abstractor"):
        validate_projector_config(ProjectorConfig(name="avgpol"), 144)


@pytest.mark.parametrize("name", sorted(PROJECTORS))
def test_non_square_patch_grid(name: str) -> None:
    """A non-square patch count is rejected, naming N and requiring h == w, at build and at forward."""
    with pytest.raises(ValueError, match=r"N=150 .*must be square \(h == w"):
        build(name, 4, 150)
    with pytest.raises(ValueError, match="N=150"):
        build(name, 4, 144)(torch.randn(1, 150, DV))


def test_cls_token_hint() -> None:
    """N = h*w + 1 (577) produces a message saying the CLS token must be dropped."""
    with pytest.raises(ValueError, match=r"577 = 24\*24 \+ 1: the CLS token.*drop it"):
        build("deco", 144, 577)
    with pytest.raises(ValueError, match="CLS token"):
        build("mlp", num_patches=64)(torch.randn(1, 65, DV))


@pytest.mark.parametrize("name", ["deco", "resampler", "c-abstractor"])
def test_non_square_num_tokens(name: str) -> None:
    """Grid projectors reject a non-square M, naming num_tokens and its value."""
    with pytest.raises(ValueError, match=r"projector.num_tokens=10: expected a perfect square"):
        build(name, 10, 144)


def test_qformer_accepts_non_square_tokens() -> None:
    """The Q-Former's queries form no grid, so M = 32 (BLIP-2) is allowed."""
    assert build("qformer", 32, 144)(torch.randn(1, 144, DV)).shape == (1, 32, DLLM)


@pytest.mark.parametrize("name", ["deco", "qformer", "resampler", "c-abstractor"])
def test_more_tokens_than_patches(name: str) -> None:
    """M > N is rejected as an upsampling, at build and when a smaller grid reaches forward."""
    with pytest.raises(ValueError, match=r"num_tokens=256.*upsample"):
        build(name, 256, 144)
    if name != "c-abstractor":
        with pytest.raises(ValueError, match="upsample"):
            build(name, 144, 144)(torch.randn(1, 64, DV))


def test_bad_mode_and_fields() -> None:
    """Invalid mode, depth, dropout and input width raise ValueErrors naming the field and value."""
    with pytest.raises(ValueError, match=r"projector.mode='bilinear': expected one of avg, max"):
        build("deco", mode="bilinear")
    with pytest.raises(ValueError, match=r"projector.mlp_depth=0"):
        build("mlp", mlp_depth=0)
    with pytest.raises(ValueError, match=r"projector.dropout=1.5"):
        build("qformer", dropout=1.5)
    with pytest.raises(ValueError, match=r"heads=5"):
        build("qformer", qformer_heads=5)
    with pytest.raises(ValueError, match=r"feature width 7 != vision_dim=8"):
        build("deco")(torch.randn(1, 144, 7))


def test_cabstractor_rejects_other_grid() -> None:
    """The C-Abstractor's learned positions fix N, so a different patch count at forward is an error."""
    with pytest.raises(ValueError, match="built for num_patches=144"):
        build("c-abstractor", 16, 144)(torch.randn(1, 64, DV))


# ------------------------------------------------------------------------------------------ attention capture
@pytest.mark.parametrize(("name", "depth"), [("qformer", 1), ("qformer", 3), ("resampler", 1)])
def test_attention_capture_and_gradients(name: str, depth: int) -> None:
    """Captured attention maps have the documented shapes, are row-stochastic and receive gradients on backward."""
    proj = build(name, 9, 64, qformer_depth=depth)
    proj.capture_attention = True
    y = proj(torch.randn(2, 64, DV))
    if name == "qformer":
        expected_order = [(kind, i) for i in range(depth) for kind in ("self", "cross")]
    else:
        expected_order = [("cross", 0)]
    assert [(m["kind"], m["layer"]) for m in proj.attention_maps] == expected_order
    heads = 4
    for m in proj.attention_maps:
        expected = (2, heads, 9, 9) if m["kind"] == "self" else (2, heads, 9, 64)
        assert m["attn"].shape == expected
        torch.testing.assert_close(m["attn"].sum(-1), torch.ones(expected[:3]))
    y.square().sum().backward()
    for m in proj.attention_maps:
        assert m["attn"].grad is not None and m["attn"].grad.shape == m["attn"].shape
        assert m["attn"].grad.abs().sum() > 0


def test_attention_not_captured_by_default() -> None:
    """Without capture_attention the maps list stays empty after a forward pass."""
    proj = build("qformer")
    proj(torch.randn(1, 144, DV))
    assert proj.attention_maps == []


def test_resampler_positions_share_a_frame() -> None:
    """With M = N the resampler's query positions equal its key positions (both in patch units)."""
    proj = ResamplerProjector(DV, DLLM, num_tokens=16)
    q_pos, k_pos = proj.positions(4, 4)
    torch.testing.assert_close(q_pos, k_pos)
    q_pos, k_pos = proj.positions(8, 8)
    assert not torch.allclose(q_pos, k_pos[:16])


def test_build_from_every_registry_row() -> None:
    """Every registry row has a description and builds an instance of its class."""
    for name, spec in PROJECTORS.items():
        assert spec.description
        assert isinstance(build(name), spec.cls)
    assert isinstance(build("deco"), DecoProjector)


@pytest.mark.parametrize(("depth", "squeeze_excite"), [(0, False), (1, True)])
def test_cabstractor_variants(depth: int, squeeze_excite: bool) -> None:
    """The C-Abstractor builds with zero conv blocks or with squeeze-excitation and keeps its output shape."""
    proj = build("c-abstractor", 16, 64, cabs_depth=depth, cabs_squeeze_excite=squeeze_excite)
    assert proj(torch.randn(2, 64, DV)).shape == (2, 16, DLLM)
