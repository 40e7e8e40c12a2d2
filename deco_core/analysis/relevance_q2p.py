"""Query-to-Patch relevance R_qp [M, N] for every projector, chosen by the method its class declares.

Each projector class declares `relevance` (a key of `deco_core.model.projector_config.RELEVANCE_METHODS`,
checked when the class is defined) and `relevance_method(cfg)`; this module maps each method to the function
that computes it. Fixed maps: deco (avg) is its pooling matrix P exactly, linear/mlp the identity.
Learned-query projectors (qformer, resampler) use the Chefer rules over their captured attention
(relevance.propagate_query_to_patch). Projectors without attention or a fixed matrix get a documented
substitute: deco (max) the max-pool routing share, c-abstractor gradient x input of each output token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from deco_core.analysis.relevance_model import RelevanceInputs, relevance_mode, token_relevance
from deco_core.model.projector_config import RELEVANCE_METHODS, ProjectorTraits

log = logging.getLogger(__name__)

MAX_POOL_METHOD = "max-routing"
"""deco with mode "max": the share of channels whose max in window j comes from patch i (rows sum to 1)."""
FIXED_METHODS = ("pool-matrix", "identity")
"""Methods read from the projector's fixed `query_to_patch(N)` matrix; every other one needs the sample inputs."""


def q2p_method(model) -> str:
    """The Query-to-Patch method `model`'s projector class declares for its config (see RELEVANCE_METHODS)."""
    cls = type(model.projector)
    if not (issubclass(cls, ProjectorTraits) and cls.name):
        raise KeyError(f"projector {cls.__name__} declares no query-to-patch method: it must inherit the "
                       "ProjectorTraits of a registered projector (deco_core.model.projector_config)")
    return cls.relevance_method(model.cfg.projector)


def query_to_patch(model, inputs: RelevanceInputs | None = None, target_positions: list[int] | None = None,
                   start_layer: int = 0, end_layer: int | None = None) -> Tensor:
    """R_qp [M, N] (non-negative, float32 on CPU).

    pool-matrix / identity: the projector's fixed `query_to_patch(N)` (inputs not needed). attention-rules:
    the mean over target answer tokens of the per-token rule-propagated maps. max-routing / grad-x-input:
    input-dependent substitutes computed on `inputs`' image (target-independent), rows summing to 1.
    """
    method = q2p_method(model)
    if method in FIXED_METHODS:
        return model.projector.query_to_patch(model.vision.num_patches).float().cpu()
    if inputs is None:
        raise ValueError(f"query_to_patch: projector {model.cfg.projector.name!r} ({method}) depends on the input; "
                         "pass the sample inputs")
    return _INPUT_METHODS[method](model, inputs, target_positions, start_layer, end_layer)


def attention_rules(model, inputs: RelevanceInputs, target_positions: list[int] | None = None,
                    start_layer: int = 0, end_layer: int | None = None) -> Tensor:
    """Learned-query projectors: the mean over target tokens of the rule-propagated R_qp maps: [M, N]."""
    _, q2p = token_relevance(model, inputs, target_positions, start_layer, end_layer, with_projector=True)
    assert q2p is not None
    return q2p.mean(dim=0)


def _features(model, inputs: RelevanceInputs) -> Tensor:
    """Patch features [1, N, Dv] as a leaf requiring grad (no LLM pass)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        feats = model.vision(inputs.pixel_values.to(device, model.vision.model.dtype))
    return feats.detach().to(next(model.projector.parameters(), feats).dtype).requires_grad_(True)


def max_pool_routing(model, inputs: RelevanceInputs) -> Tensor:
    """deco (max): R_qp[j, i] = share of the Dv channels whose maximum over window j is patch i: [M, N].

    The gradient of a max-pooled channel is 1 at its argmax and 0 elsewhere, so d(sum_c pooled[j, c])/dx
    counts, per patch, the channels it wins; dividing by Dv makes each row sum to 1 like P's rows.
    """
    with relevance_mode(model), torch.enable_grad():
        feats = _features(model, inputs)
        pooled = model.projector.pool_tokens(feats)[0]  # [M, Dv]
        rows = [torch.autograd.grad(pooled[j].sum(), feats, retain_graph=True)[0][0].sum(-1)
                for j in range(pooled.shape[0])]  # each [N]
    return (torch.stack(rows) / feats.shape[-1]).float().cpu()


def gradient_x_input(model, inputs: RelevanceInputs) -> Tensor:
    """Substitute R_qp for projectors with neither attention nor a fixed matrix: [M, N], rows sum to 1.

    For output token j, s_j = y_j · u_j with u_j = y_j / ||y_j|| held constant (the token's size along its own
    direction); R_qp[j, i] = (sum_d x_i,d · ∂s_j/∂x_i,d)⁺, then each row divided by its sum (zero rows stay
    zero). This is gradient x input, a first-order attribution, not a Chefer rule; it is target-independent.
    """
    with relevance_mode(model), torch.enable_grad():
        feats = _features(model, inputs)
        out = model.projector(feats)[0]  # [M, D]
        rows = []
        for j in range(out.shape[0]):
            u = out[j].detach() / out[j].detach().norm().clamp(min=1e-12)
            grad = torch.autograd.grad((out[j] * u).sum(), feats, retain_graph=True)[0]  # [1, N, Dv]
            rows.append((grad[0] * feats[0].detach()).sum(-1).clamp(min=0))
    r = torch.stack(rows).float().cpu()  # [M, N]
    sums = r.sum(dim=-1, keepdim=True)
    return torch.where(sums > 0, r / sums.clamp(min=1e-30), torch.zeros_like(r))


_INPUT_METHODS: dict[str, Callable[..., Tensor]] = {  # method -> f(model, inputs, targets, start, end) -> [M, N]
    "attention-rules": attention_rules,
    MAX_POOL_METHOD: lambda model, inputs, *_: max_pool_routing(model, inputs),
    "grad-x-input": lambda model, inputs, *_: gradient_x_input(model, inputs),
}
if set(_INPUT_METHODS) | set(FIXED_METHODS) != set(RELEVANCE_METHODS):
    raise ImportError(f"relevance methods without an implementation: "
                      f"{sorted(set(RELEVANCE_METHODS) - set(_INPUT_METHODS) - set(FIXED_METHODS))}")


def supported_methods() -> tuple[str, ...]:
    """Every R_qp method this module computes (equal to RELEVANCE_METHODS' keys)."""
    return (*FIXED_METHODS, *_INPUT_METHODS)


__all__ = ["FIXED_METHODS", "MAX_POOL_METHOD", "attention_rules", "gradient_x_input", "max_pool_routing",
           "q2p_method", "query_to_patch", "supported_methods"]
