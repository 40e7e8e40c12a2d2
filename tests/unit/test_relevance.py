"""Unit tests for R-GAE: the Chefer rules in closed form, Query-to-Patch per projector, map shapes and norms."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from deco_core.analysis.explain import analyze_relevance
from deco_core.analysis.locality import box_scores, locality_samples, map_scores, patches_in_box
from deco_core.analysis.relevance import (
    aggregate_words,
    avg_heads,
    cross_attention_update,
    normalize_relevance,
    normalize_rows,
    propagate_query_to_patch,
    propagate_self,
    relevance_row,
    self_attention_update,
    text_to_patch,
)
from deco_core.analysis.relevance_model import (
    build_inputs,
    group_words,
    image_pixels,
    relevance_mode,
)
from deco_core.analysis.relevance_q2p import q2p_method, query_to_patch
from deco_core.config import compose
from deco_core.data.shapes import eval_vqa_samples
from deco_core.model.deco import DecoModel
from deco_core.model.projectors import adaptive_pool_matrix

PROMPT = "What colour is the circle?"


def random_attention(heads: int, n: int, m: int, seed: int) -> torch.Tensor:
    """Row-stochastic attention [heads, n, m]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(heads, n, m, generator=g).softmax(dim=-1)


# ------------------------------------------------------------------------------------------------- rules
def test_avg_heads_keeps_positive_part_and_means_heads() -> None:
    """Ā is the head mean of (∇A ⊙ A) with negative products set to zero."""
    attn = torch.tensor([[[0.5, 0.5], [1.0, 0.0]], [[0.2, 0.8], [0.4, 0.6]]])  # [2, 2, 2]
    grad = torch.tensor([[[2.0, -1.0], [1.0, 3.0]], [[-1.0, 1.0], [0.5, 0.5]]])
    expected = torch.tensor([[(1.0 + 0.0) / 2, (0.0 + 0.8) / 2], [(1.0 + 0.2) / 2, (0.0 + 0.3) / 2]])
    torch.testing.assert_close(avg_heads(attn, grad), expected)


def test_rules_match_closed_form_on_two_layer_linear_attention_model() -> None:
    """On y = w·(Σ_h A2_h/H)(Σ_h A1_h/H)x [t], autograd gradients through the rules give the hand-derived R."""
    n, d, heads, t = 4, 3, 2, 2
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(n, d, generator=g), torch.randn(d, generator=g)
    a1 = random_attention(heads, n, n, 1).requires_grad_()
    a2 = random_attention(heads, n, n, 2).requires_grad_()
    h1 = a1.mean(0) @ x  # [n, d]
    y = (a2.mean(0) @ h1)[t] @ w
    g1, g2 = torch.autograd.grad(y, [a1, a2])
    # by hand: ∂y/∂A2_h[i, j] = δ_it (w·h1_j)/H ; ∂y/∂A1_h[i, j] = (mean_h' A2_h'[t, i]) (w·x_j)/H
    with torch.no_grad():
        a1d, a2d = a1.detach(), a2.detach()
        e_t = torch.zeros(n, 1)
        e_t[t] = 1.0
        hand_g2 = (e_t * (h1 @ w)[None, :]) / heads  # [n, n]
        hand_g1 = (a2d.mean(0)[t][:, None] * (x @ w)[None, :]) / heads
        torch.testing.assert_close(g2, hand_g2.expand(heads, n, n))
        torch.testing.assert_close(g1, hand_g1.expand(heads, n, n))
        bar1 = (hand_g1 * a1d).clamp(min=0).mean(0)
        bar2 = (hand_g2 * a2d).clamp(min=0).mean(0)
        expected = (torch.eye(n) + bar2) @ (torch.eye(n) + bar1)
    r = propagate_self([avg_heads(a1d, g1), avg_heads(a2d, g2)])
    torch.testing.assert_close(r, expected)
    # only row t of the last layer has gradient, so rows other than t gain nothing from layer 2
    torch.testing.assert_close(r[0], (torch.eye(n) + bar1)[0])


def test_self_attention_update_and_row_shortcut_agree() -> None:
    """R += Ā·R per layer equals the product of (I + Ā_l), and relevance_row gives its rows exactly."""
    bars = [random_attention(1, 6, 6, s)[0] * 0.3 for s in range(3)]
    r = torch.eye(6)
    for bar in bars:
        r = self_attention_update(r, bar)
    torch.testing.assert_close(r, (torch.eye(6) + bars[2]) @ (torch.eye(6) + bars[1]) @ (torch.eye(6) + bars[0]))
    torch.testing.assert_close(propagate_self(bars), r)
    for i in range(6):
        torch.testing.assert_close(relevance_row(bars, i), r[i])


def test_normalization_guard_on_identity() -> None:
    """R̄ of R = I is exactly I (zero row sums are guarded), with no NaN."""
    out = normalize_relevance(torch.eye(5))
    assert torch.equal(out, torch.eye(5))


def test_normalization_rows_of_r_hat_sum_to_one() -> None:
    """Rows with relevance beyond the identity get R̂ rows summing to 1; untouched rows stay identity rows."""
    r = torch.eye(3)
    r[0] += torch.tensor([0.0, 2.0, 6.0])
    out = normalize_relevance(r)
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.25, 0.75]))
    torch.testing.assert_close(out[1:], torch.eye(3)[1:])
    torch.testing.assert_close((out - torch.eye(3))[0].sum(), torch.tensor(1.0))


def test_cross_attention_update_closed_form() -> None:
    """R_sq += R̄_ssᵀ·Ā·R̄_qq; with identity priors it adds Ā itself."""
    a = random_attention(1, 3, 5, 0)[0]
    torch.testing.assert_close(cross_attention_update(torch.zeros(3, 5), torch.eye(3), a, torch.eye(5)), a)
    r_ss = torch.eye(3) + random_attention(1, 3, 3, 1)[0]
    expected = normalize_relevance(r_ss).T @ a
    torch.testing.assert_close(cross_attention_update(torch.zeros(3, 5), r_ss, a, torch.eye(5)), expected)


def test_query_to_patch_rules_self_then_cross() -> None:
    """One self layer then one cross layer: R_qp = R̄_qqᵀ·Ā_cross with R_qq = I + Ā_self."""
    m, n = 4, 9
    a_self, a_cross = random_attention(2, m, m, 3), random_attention(2, m, n, 4)
    g_self, g_cross = torch.randn(2, m, m), torch.randn(2, m, n)
    maps = [{"kind": "self", "attn": a_self, "grad": g_self}, {"kind": "cross", "attn": a_cross, "grad": g_cross}]
    r_qq = torch.eye(m) + avg_heads(a_self, g_self)
    expected = normalize_relevance(r_qq).T @ avg_heads(a_cross, g_cross)
    torch.testing.assert_close(propagate_query_to_patch(maps, m, n), expected)
    with pytest.raises(ValueError, match="kind"):
        propagate_query_to_patch([{"kind": "bogus", "attn": a_self, "grad": g_self}], m, n)


def test_text_to_patch_and_row_normalisation() -> None:
    """T2P = T2Q·Q2P (shared or per-row Q2P); normalised rows have max 1, zero rows stay zero."""
    t2q = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 2.0]])
    q2p = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    out = text_to_patch(t2q, q2p)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 1.0]]))
    per_row = text_to_patch(t2q, q2p.expand(3, 2, 3), normalize=False)
    torch.testing.assert_close(per_row, t2q @ q2p)
    assert torch.equal(normalize_rows(torch.tensor([[-1.0, 0.0]])), torch.zeros(1, 2))
    torch.testing.assert_close(aggregate_words(torch.tensor([[1.0], [3.0], [5.0]]), [0, 0, 1], 2),
                               torch.tensor([[2.0], [5.0]]))


# ------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def image() -> Image.Image:
    """One ShapesWorld eval image."""
    return Image.open(io.BytesIO(next(eval_vqa_samples(1, 0))["png"])).convert("RGB")


def tiny_model(tokenizer, projector: str = "deco") -> DecoModel:
    """An untrained tiny DecoModel (pipeline/tiny config) with the given projector."""
    # M = 16 pinned (a 4x4 query grid over the 12x12 patches), whatever the tiny default's token count
    overrides = [f"model.projector={projector}", "model.projector.num_tokens=16"]
    return DecoModel.from_config(compose("pipeline/tiny", overrides).model, tokenizer)


@pytest.fixture(scope="module")
def deco_model(shapes_tokenizer) -> DecoModel:
    return tiny_model(shapes_tokenizer)


def test_deco_query_to_patch_is_the_pool_matrix(deco_model) -> None:
    """For deco (avg) Query-to-Patch is adaptive_pool_matrix exactly."""
    assert q2p_method(deco_model) == "pool-matrix"
    assert torch.equal(query_to_patch(deco_model), adaptive_pool_matrix(12, 12, 4, 4))


def test_mlp_query_to_patch_is_identity(shapes_tokenizer) -> None:
    """For mlp Query-to-Patch is the N x N identity."""
    model = tiny_model(shapes_tokenizer, "mlp")
    assert torch.equal(query_to_patch(model), torch.eye(144))


@pytest.mark.parametrize("projector", ["qformer", "c-abstractor", "deco_max"])
def test_input_dependent_query_to_patch_shape_and_sign(shapes_tokenizer, image, projector: str) -> None:
    """qformer (rules), c-abstractor (grad x input) and deco max (routing) give a non-negative [M, N] map."""
    model = tiny_model(shapes_tokenizer, projector)
    inputs = build_inputs(model, image_pixels(model, image), PROMPT, "red")
    q2p = query_to_patch(model, inputs)
    assert q2p.shape == (16, 144)
    assert (q2p >= 0).all() and q2p.sum() > 0
    if projector != "qformer":  # substitutes are row-stochastic like the pool matrix
        torch.testing.assert_close(q2p.sum(-1), torch.ones(16))
    if projector == "deco_max":  # a max-pool window only routes to its own patches
        assert (q2p[adaptive_pool_matrix(12, 12, 4, 4) == 0] == 0).all()


def test_text_to_patch_shapes_and_normalisation_on_tiny_deco(deco_model, image) -> None:
    """T2Q [W, M], T2P [W, N]: non-negative, each row's max is 1, T2P = normalised T2Q_raw·P per word."""
    result = analyze_relevance(deco_model, image, PROMPT, answer="top left")
    assert result.words == ["top", "left"] and len(result.tokens) == 2
    assert result.t2q.shape == (2, 16) and result.t2p.shape == (2, 144) and result.q2p.shape == (16, 144)
    assert result.patch_grid == 12 and result.query_grid == 4
    for maps in (result.t2q, result.t2p, result.token_t2q, result.token_t2p):
        assert (maps >= 0).all() and torch.isfinite(maps).all()
    torch.testing.assert_close(result.t2p.amax(-1), torch.ones(2))
    torch.testing.assert_close(result.t2q.amax(-1), torch.ones(2))
    torch.testing.assert_close(result.t2p, text_to_patch(result.token_t2q, result.q2p))
    assert result.to_json()["normalisation"].startswith("word rows")


def test_relevance_mode_restores_model_state(deco_model) -> None:
    """Analysis switches to eager attention and capture only while it runs, and restores training mode."""
    deco_model.train()
    with relevance_mode(deco_model):
        assert deco_model.llm.config._attn_implementation == "eager"
        assert deco_model.projector.capture_attention and not deco_model.training
    assert deco_model.llm.config._attn_implementation == "sdpa"
    assert not deco_model.projector.capture_attention and deco_model.training
    deco_model.eval()


def test_word_grouping_of_a_box_answer(shapes_tokenizer) -> None:
    """A box answer groups as '[', numbers and commas, one token each (the space is part of '▁[')."""
    enc = shapes_tokenizer(" [0.12, 0.40]", add_special_tokens=False)
    index, words = group_words(shapes_tokenizer, enc["input_ids"], enc.word_ids())
    assert words == ["[", "0.12", ",", "0.40", "]"]
    assert list(index) == [0, 1, 2, 3, 4]


def test_build_inputs_rejects_bad_prompts(deco_model, image) -> None:
    """Two <image> placeholders or an empty answer raise a clear ValueError."""
    pixels = image_pixels(deco_model, image)
    with pytest.raises(ValueError, match="placeholders"):
        build_inputs(deco_model, pixels, "<image> <image> hi", "red")
    with pytest.raises(ValueError, match="empty"):
        build_inputs(deco_model, pixels, PROMPT, "  ")


# ---------------------------------------------------------------------------------------------- locality
def test_box_scores_uniform_and_peaked_maps() -> None:
    """Uniform map: share = baseline, lift 1, concentration 0; map inside the box: share 1, hit 1; ties split the hit."""
    inside = patches_in_box([0.0, 0.0, 0.5, 0.5], 4)
    assert inside.sum() == 4 and inside[0] and inside[5] and not inside[2]
    uniform = box_scores(torch.ones(16), [0.0, 0.0, 0.5, 0.5], 4)
    assert uniform is not None
    assert uniform["share"] == pytest.approx(0.25) and uniform["lift"] == pytest.approx(1.0)
    assert map_scores(torch.ones(16))["concentration"] == pytest.approx(0.0)
    peaked = box_scores(inside.float(), [0.0, 0.0, 0.5, 0.5], 4)
    assert peaked is not None and peaked["share"] == 1.0 and peaked["hit"] == 1.0 and peaked["lift"] == 4.0
    assert box_scores(torch.ones(16), [0.3, 0.3, 0.32, 0.32], 4) is None  # no patch centre inside
    tied = torch.zeros(16)
    tied[[0, 3]] = 1.0  # two equal peaks: one inside the box, one outside
    assert box_scores(tied, [0.0, 0.0, 0.5, 0.5], 4)["hit"] == 0.5  # type: ignore[index]


def test_locality_samples_are_fixed_and_name_their_object() -> None:
    """The probe set is deterministic, alternates colour/shape questions and carries a valid box per probe."""
    a, b = locality_samples(6, seed=3), locality_samples(6, seed=3)
    assert [s.png for s in a] == [s.png for s in b] and [s.answer for s in a] == [s.answer for s in b]
    assert {s.kind for s in a} == {"colour", "shape"}
    for s in a:
        x1, y1, x2, y2 = s.bbox
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1 and s.prompt.startswith("<image>\n")


def test_locality_reports_one_lift_under_one_name(deco_model) -> None:
    """The aggregate lift is mass_lift = mean mass in box / mean baseline, and no second 'lift' mean is reported
    (the CLI summary, the figure title and MLflow all read mass_lift)."""
    from deco_core.analysis.locality import locality_scores
    from pipelines.cli import results_table
    from pipelines.workflow.context import StageReport

    scores = locality_scores(deco_model, locality_samples(4, seed=0))
    assert "lift" not in scores
    assert scores["mass_lift"] == pytest.approx(scores["mass_in_box"] / scores["uniform_baseline"])
    outputs = {k: round(v, 4) for k, v in scores.items() if isinstance(v, float)}
    table = results_table([StageReport("analyze", "completed", outputs, 1.0, None)])
    cells = "\n".join(str(c) for col in table.columns for c in col._cells)
    assert f"mass_lift={outputs['mass_lift']:.4g}" in cells and "\nlift=" not in f"\n{cells}"
