"""R-GAE relevance rules (Chefer et al., ICCV 2021) as pure tensor functions, and the `RelevanceResult` record.

Rules (reference/paper.md §7): head-averaged positive gradient x attention, the self-attention update, the
normalisation before cross-attention (guarded for zero row sums) and the cross-attention update; their
composition into Text-to-Query (LLM), Query-to-Patch (projector) and Text-to-Patch maps. The model-level
passes live in relevance_model.py (Text-to-Query) and relevance_q2p.py (Query-to-Patch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

ROW_SUM_EPS = 1e-12
"""Row sums of R - I at or below this are treated as zero by `normalize_relevance` (the R = I guard)."""


# ------------------------------------------------------------------------------------------------ rules
def avg_heads(attn: Tensor, grad: Tensor) -> Tensor:
    """Ā = mean_h[(∇A ⊙ A)⁺]: attn, grad [..., h, n, m] -> [..., n, m]."""
    if attn.shape != grad.shape:
        raise ValueError(f"avg_heads: attention {tuple(attn.shape)} and gradient {tuple(grad.shape)} differ")
    if attn.dim() < 3:
        raise ValueError(f"avg_heads: expected [..., heads, n, m], got shape {tuple(attn.shape)}")
    return (grad.float() * attn.float()).clamp(min=0).mean(dim=-3)


def self_attention_update(r: Tensor, a_bar: Tensor) -> Tensor:
    """R += Ā·R for self-attention in one modality: r [n, k], a_bar [n, n] -> [n, k].

    Used both for R^{ss} (k = n) and for the cross-modal block R^{sq} (k = |q|).
    """
    return r + a_bar @ r


def normalize_relevance(r: Tensor) -> Tensor:
    """R̄ = R̂ / rowsum(R̂) + I with R̂ = R - I, for a square R [n, n].

    Guard: a row whose R̂ sums to zero (always so for R = I) keeps R̂'s row as zeros, so that row of R̄ is
    the identity row; R = I therefore maps to I exactly.
    """
    n = r.shape[-1]
    if r.dim() != 2 or r.shape[0] != n:
        raise ValueError(f"normalize_relevance: expected a square [n, n] matrix, got {tuple(r.shape)}")
    eye = torch.eye(n, dtype=r.dtype, device=r.device)
    r_hat = r - eye
    sums = r_hat.sum(dim=-1, keepdim=True)  # [n, 1]
    zero = sums.abs() <= ROW_SUM_EPS
    safe = torch.where(zero, torch.ones_like(sums), sums)
    return torch.where(zero, torch.zeros_like(r_hat), r_hat / safe) + eye


def cross_attention_update(r_sq: Tensor, r_ss: Tensor, a_sq: Tensor, r_qq: Tensor) -> Tensor:
    """R^{sq} += (R̄^{ss})ᵀ·Ā_{sq}·R̄^{qq} for modality s attending to q.

    r_sq [s, q], r_ss [s, s], a_sq [s, q] (head-averaged cross-attention), r_qq [q, q]; the two square
    blocks are normalised here with `normalize_relevance`.
    """
    return r_sq + normalize_relevance(r_ss).T @ a_sq @ normalize_relevance(r_qq)


def propagate_self(a_bars: Iterable[Tensor]) -> Tensor:
    """R over a stack of self-attention layers: start R = I, then R += Ā_l·R per layer. Ā_l [n, n] -> R [n, n]."""
    r: Tensor | None = None
    for a_bar in a_bars:
        if r is None:
            r = torch.eye(a_bar.shape[-1], dtype=a_bar.dtype, device=a_bar.device)
        r = self_attention_update(r, a_bar)
    if r is None:
        raise ValueError("propagate_self: no attention layers given")
    return r


def relevance_row(a_bars: Sequence[Tensor], index: int) -> Tensor:
    """Row `index` of `propagate_self(a_bars)` in O(L·n²) instead of O(L·n³): [n].

    R = (I + Ā_L)…(I + Ā_1), so e_iᵀR is obtained by v ← v + v·Ā_l from the last layer down to the first.
    """
    if not a_bars:
        raise ValueError("relevance_row: no attention layers given")
    v = torch.zeros(a_bars[0].shape[-1], dtype=a_bars[0].dtype, device=a_bars[0].device)
    v[index] = 1.0
    for a_bar in reversed(a_bars):
        v = v + v @ a_bar
    return v


def propagate_query_to_patch(maps: Sequence[dict[str, Any]], num_queries: int, num_patches: int) -> Tensor:
    """R_qp [M, N] of a learned-query projector from captured maps with their gradients.

    Each map is {"kind": "self" | "cross", "attn": [h, M, M] or [h, M, N], "grad": same shape}, in forward
    order. Start R_qq = I_M, R_qp = 0; a self layer applies R_qq += Ā·R_qq and R_qp += Ā·R_qp; a cross layer
    applies R_qp += R̄_qqᵀ·Ā·R̄_pp with R_pp = I_N (the ViT is not propagated). Patches never attend to the
    queries (R_pq = 0), so the co-attention update of R_qq adds nothing and is skipped.
    """
    r_qq = torch.eye(num_queries)
    r_qp = torch.zeros(num_queries, num_patches)
    r_pp = torch.eye(num_patches)
    for i, entry in enumerate(maps):
        a_bar = avg_heads(entry["attn"], entry["grad"]).cpu()
        if entry["kind"] == "self":
            r_qp = self_attention_update(r_qp, a_bar)
            r_qq = self_attention_update(r_qq, a_bar)
        elif entry["kind"] == "cross":
            if a_bar.shape != (num_queries, num_patches):
                raise ValueError(f"projector map {i}: cross-attention {tuple(a_bar.shape)}, expected "
                                 f"[{num_queries}, {num_patches}]")
            r_qp = cross_attention_update(r_qp, r_qq, a_bar, r_pp)
        else:
            raise ValueError(f"projector map {i}: kind {entry['kind']!r}; expected 'self' or 'cross'")
    return r_qp


# ------------------------------------------------------------------------------------ maps and normalisation
def normalize_rows(x: Tensor) -> Tensor:
    """The documented map normalisation: each row divided by its maximum, so rows lie in [0, 1] with max 1.

    Negative entries are clamped to 0 first; an all-zero row stays zero.
    """
    x = x.clamp(min=0)
    peak = x.amax(dim=-1, keepdim=True)
    return torch.where(peak > 0, x / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(x))


def text_to_patch(t2q: Tensor, q2p: Tensor, normalize: bool = True) -> Tensor:
    """T2P = T2Q·Q2P: t2q [T, M] with q2p [M, N] (one map for all rows) or [T, M, N] (one per row) -> [T, N].

    With `normalize`, rows are divided by their maximum (`normalize_rows`); the scale of a row never changes
    where its relevance lies, so T2P is the same whether T2Q was normalised first or not.
    """
    if q2p.dim() == 2:
        out = t2q.float() @ q2p.float()
    elif q2p.dim() == 3 and q2p.shape[0] == t2q.shape[0]:
        out = torch.einsum("tm,tmn->tn", t2q.float(), q2p.float())
    else:
        raise ValueError(f"text_to_patch: t2q {tuple(t2q.shape)} does not fit q2p {tuple(q2p.shape)}; "
                         "expected q2p [M, N] or [T, M, N]")
    return normalize_rows(out) if normalize else out.clamp(min=0)


def aggregate_words(token_rows: Tensor, word_index: Sequence[int], num_words: int) -> Tensor:
    """Word rows as the mean of their tokens' rows: token_rows [T, K], word_index[t] = word of token t -> [W, K]."""
    if len(word_index) != token_rows.shape[0]:
        raise ValueError(f"aggregate_words: {len(word_index)} word indices for {token_rows.shape[0]} token rows")
    out = torch.zeros(num_words, token_rows.shape[1], dtype=token_rows.dtype)
    counts = torch.zeros(num_words, 1, dtype=token_rows.dtype)
    index = torch.as_tensor(list(word_index), dtype=torch.long)
    out.index_add_(0, index, token_rows)
    counts.index_add_(0, index, torch.ones(len(word_index), 1, dtype=token_rows.dtype))
    return out / counts.clamp(min=1)


def grid_side(n: int) -> int | None:
    """k when n == k*k, else None (maps over n cells are drawn as a k x k grid only when square)."""
    k = math.isqrt(n)
    return k if k * k == n else None


# ------------------------------------------------------------------------------------------------ record
@dataclass
class RelevanceResult:
    """R-GAE maps for one (image, prompt, answer).

    Word rows are the mean of their tokens' raw rows (`aggregate_words`), then normalised by their maximum
    (`normalize_rows`); token rows are raw (non-negative, unnormalised). `q2p` is the projector's [M, N] map
    (for learned-query projectors, whose map depends on the target token, the mean over answer tokens; the
    per-token maps are in `token_q2p` and are the ones used for T2P).
    """

    prompt: str
    answer: str
    projector: str
    q2p_method: str
    tokens: list[str]
    words: list[str]
    word_index: list[int]
    t2q: Tensor  # [W, M] normalised
    t2p: Tensor  # [W, N] normalised
    q2p: Tensor  # [M, N]
    token_t2q: Tensor  # [T, M] raw
    token_t2p: Tensor  # [T, N] raw
    patch_grid: int
    query_grid: int | None
    token_q2p: Tensor | None = field(default=None, repr=False)  # [T, M, N] when target-dependent

    @property
    def answer_t2p(self) -> Tensor:
        """T2P of the whole answer: the mean of all token rows, normalised by its maximum: [N]."""
        return normalize_rows(self.token_t2p.mean(dim=0, keepdim=True))[0]

    def to_json(self, digits: int = 5) -> dict[str, Any]:
        """JSON-ready dict of the maps (lists of floats rounded to `digits`) and their metadata."""
        def rows(x: Tensor) -> list:
            return torch.round(x.float() * 10**digits).div(10**digits).tolist()

        return {
            "prompt": self.prompt, "answer": self.answer, "projector": self.projector,
            "q2p_method": self.q2p_method, "tokens": self.tokens, "words": self.words,
            "word_index": self.word_index, "patch_grid": self.patch_grid, "query_grid": self.query_grid,
            "normalisation": "word rows: mean of token rows, then each row divided by its maximum",
            "t2q": rows(self.t2q), "t2p": rows(self.t2p), "q2p": rows(self.q2p),
        }  # fmt: skip


# Model-level entry points live in sibling modules; they are importable from here too (lazily, no cycle).
_MODEL_LEVEL = {
    "analyze_relevance": "deco_core.analysis.explain",
    "build_inputs": "deco_core.analysis.relevance_model",
    "text_to_query": "deco_core.analysis.relevance_model",
    "query_to_patch": "deco_core.analysis.relevance_q2p",
}


def __getattr__(name: str) -> Any:
    if name in _MODEL_LEVEL:
        import importlib

        return getattr(importlib.import_module(_MODEL_LEVEL[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RelevanceResult", "aggregate_words", "avg_heads", "cross_attention_update", "grid_side",
    "normalize_relevance", "normalize_rows", "propagate_query_to_patch", "propagate_self", "relevance_row",
    "self_attention_update", "text_to_patch",
]  # fmt: skip
