"""Model-level R-GAE on a DecoModel: build teacher-forced inputs, one gradient pass per answer token, Text-to-Query.

The LLM runs with eager attention (SDPA never materialises the probabilities) and returns its post-softmax maps;
for each answer token the target logit is differentiated w.r.t. every LLM map (and every captured projector
map), and R is propagated over the LLM layers. `deco_core.analysis.explain.analyze_relevance` assembles the full `RelevanceResult`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from deco_core.analysis.relevance import (
    avg_heads,
    propagate_query_to_patch,
    relevance_row,
)
from deco_core.data.conversation import Segment, prompt_text, tokenize_segments
from deco_core.data.prompts import with_image
from deco_core.data.transforms import ImageTransform

log = logging.getLogger(__name__)


@dataclass
class RelevanceInputs:
    """One teacher-forced sample: prompt + answer tokens with the image expanded into M image positions."""

    input_ids: Tensor  # [1, T]
    pixel_values: Tensor  # [1, 3, S, S]
    answer_positions: list[int]  # sequence positions of the answer tokens (the logit is read at position - 1)
    tokens: list[str]  # answer tokens as text
    word_index: list[int]  # per answer token: index into `words`
    words: list[str]
    image_positions: Tensor  # [M] sequence positions of the image tokens
    prompt: str
    answer: str


def with_image_placeholder(prompt: str) -> str:
    """The user turn with exactly one image placeholder (see `deco_core.data.prompts.with_image`)."""
    return with_image(prompt)


def image_pixels(model, image: Image.Image) -> np.ndarray:
    """PIL image -> the model's normalised pixel values [3, S, S] (the evaluation transform)."""
    return ImageTransform.from_vision_config(model.cfg.vision)(image)


def group_words(tokenizer, ids: Sequence[int], word_ids: Sequence[int | None] | None) -> tuple[list[int], list[str]]:
    """(word index per token, word strings). Uses the fast tokenizer's word ids when given; otherwise a token
    starting with a space starts a word. A token that decodes to whitespace only joins the next word."""
    texts = [tokenizer.decode([i]) for i in ids]
    starts: list[bool] = []
    for t, text in enumerate(texts):
        if word_ids is not None and word_ids[t] is not None:
            new = t == 0 or word_ids[t] != word_ids[t - 1]
        else:
            new = t == 0 or text[:1].isspace()
        if t > 0 and not texts[t - 1].strip():
            new = False  # the previous token was a bare space: it belongs to this word
        starts.append(new)
    word_index, words = [], []
    for t, text in enumerate(texts):
        if starts[t]:
            words.append("")
        words[-1] += text
        word_index.append(len(words) - 1)
    return word_index, [w.strip() for w in words]


def build_inputs(model, pixels: np.ndarray, prompt: str, answer: str | None = None,
                 answer_ids: Sequence[int] | None = None) -> RelevanceInputs:
    """Tokenise `prompt` (vicuna_v1 user turn) and the teacher-forced answer exactly as training does.

    The answer is given as text (tokenised like an assistant turn, ' ' + answer) or as token ids (e.g. the
    ids the model generated, used verbatim so the explained tokens are the generated ones).
    """
    tok = model.tokenizer
    prompt = with_image_placeholder(prompt)
    max_length = int(getattr(model.llm.config, "max_position_embeddings", 4096))
    prefix = tokenize_segments([Segment(prompt_text(prompt, model.cfg.chat_template), False)], tok, model.image_token_id,
                               model.num_image_tokens, max_length, has_image=True).input_ids
    if answer_ids is None:
        if not (answer or "").strip():
            raise ValueError("relevance: the answer is empty; nothing to explain")
        answer_text = f" {(answer or '').strip()}"
        enc = tok(answer_text, add_special_tokens=False)
        answer_ids = list(enc["input_ids"])
        word_ids = enc.word_ids() if getattr(enc, "is_fast", False) else None
    else:
        answer_ids, word_ids = list(answer_ids), None
    if not answer_ids:
        raise ValueError("relevance: the answer is empty; nothing to explain")
    if len(prefix) + len(answer_ids) > max_length:
        raise ValueError(f"relevance: prompt ({len(prefix)} tokens) + answer ({len(answer_ids)} tokens) exceed "
                         f"max_length={max_length}")
    word_index, words = group_words(tok, answer_ids, word_ids)
    ids = torch.tensor([prefix + answer_ids], dtype=torch.long)  # [1, T]
    tokens = [tok.decode([i]) for i in answer_ids]
    return RelevanceInputs(
        input_ids=ids, pixel_values=torch.as_tensor(pixels).unsqueeze(0),
        answer_positions=list(range(len(prefix), len(prefix) + len(answer_ids))), tokens=tokens,
        word_index=word_index, words=words, image_positions=(ids[0] == model.image_token_id).nonzero().flatten(),
        prompt=prompt, answer=(answer or "").strip() if answer is not None else tok.decode(answer_ids).strip(),
    )


@contextmanager
def relevance_mode(model) -> Iterator[None]:
    """Eval mode, eager LLM attention and projector attention capture; everything restored on exit."""
    llm, projector = model.llm, model.projector
    old_impl, old_capture, was_training = llm.config._attn_implementation, projector.capture_attention, model.training
    llm.set_attn_implementation("eager")
    projector.capture_attention = True
    model.eval()
    try:
        yield
    finally:
        llm.set_attn_implementation(old_impl)
        projector.capture_attention = old_capture
        projector.attention_maps = []
        model.train(was_training)


@dataclass
class ForwardPass:
    """Graph-carrying outputs of one relevance forward."""

    logits: Tensor  # [1, T, V]
    llm_attentions: list[Tensor]  # per layer [1, h, T, T]
    projector_maps: list[dict]  # captured {"kind", "layer", "attn" [1, h, M, K]}
    features: Tensor  # [1, N, Dv] patch features (a leaf requiring grad)


def relevance_forward(model, inputs: RelevanceInputs) -> ForwardPass:
    """Vision (no grad) -> projector -> LLM with attentions; call inside `relevance_mode`."""
    device = next(model.parameters()).device
    ids = inputs.input_ids.to(device)
    with torch.no_grad():
        feats = model.vision(inputs.pixel_values.to(device, model.vision.model.dtype))  # [1, N, Dv]
    with torch.enable_grad():
        feats = feats.detach().to(next(model.projector.parameters(), feats).dtype).requires_grad_(True)
        image_tokens = model.projector(feats)  # [1, M, D]
        embeds = model.llm.get_input_embeddings()(ids).detach()  # [1, T, D]
        mask = (ids == model.image_token_id).unsqueeze(-1)  # [1, T, 1]
        embeds = embeds.masked_scatter(mask, image_tokens.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        out = model.llm(inputs_embeds=embeds, output_attentions=True, use_cache=False)
    attentions = list(out.attentions or [])
    if not attentions or any(a is None for a in attentions):
        raise RuntimeError(f"LLM returned no attention probabilities (attn_implementation="
                           f"{model.llm.config._attn_implementation!r}); relevance needs 'eager'")
    return ForwardPass(out.logits, attentions, list(model.projector.attention_maps), feats)


def layer_range(num_layers: int, start_layer: int, end_layer: int | None) -> range:
    """LLM layers S..E (E inclusive, None = last) over which R is propagated; validated."""
    end = num_layers - 1 if end_layer is None else end_layer
    if not 0 <= start_layer <= end < num_layers:
        raise ValueError(f"relevance layers start={start_layer}, end={end_layer}: expected "
                         f"0 <= start <= end < {num_layers}")
    return range(start_layer, end + 1)


def token_relevance(model, inputs: RelevanceInputs, target_positions: Sequence[int] | None = None,
                    start_layer: int = 0, end_layer: int | None = None,
                    with_projector: bool = False) -> tuple[Tensor, Tensor | None]:
    """Per answer token: T2Q row [M] and (with_projector) the projector's R_qp [M, N] for that token's target.

    The target of the answer token at position p is its logit y_t = logits[p - 1, id_p] (the teacher-forced
    next-token logit); R is propagated over LLM layers S..E and T2Q[t] = R[p - 1, image positions].
    Returns (t2q [T_answer, M], q2p [T_answer, M, N] or None).
    """
    targets = list(inputs.answer_positions if target_positions is None else target_positions)
    if not targets or min(targets) < 1:
        raise ValueError(f"relevance: target positions {targets} must be non-empty and >= 1")
    with relevance_mode(model):
        fwd = relevance_forward(model, inputs)
        layers = layer_range(len(fwd.llm_attentions), start_layer, end_layer)
        attns = [fwd.llm_attentions[i] for i in layers]
        maps = fwd.projector_maps if with_projector else []
        num_patches = fwd.features.shape[1]
        image_pos = inputs.image_positions.to(fwd.logits.device)
        t2q_rows, q2p_rows = [], []
        for p in targets:
            y = fwd.logits[0, p - 1, inputs.input_ids[0, p]]
            grads = torch.autograd.grad(y, attns + [m["attn"] for m in maps], retain_graph=True, allow_unused=True)
            a_bars = [avg_heads(a[0].detach(), _or_zeros(g, a)[0])
                      for a, g in zip(attns, grads[: len(attns)], strict=True)]
            t2q_rows.append(relevance_row(a_bars, p - 1)[image_pos].detach().cpu())
            if maps:
                entries = [{"kind": m["kind"], "attn": m["attn"][0].detach(), "grad": _or_zeros(g, m["attn"])[0]}
                           for m, g in zip(maps, grads[len(attns):], strict=True)]
                q2p_rows.append(propagate_query_to_patch(entries, model.num_image_tokens, num_patches))
    t2q = torch.stack(t2q_rows)  # [T_answer, M]
    return t2q, (torch.stack(q2p_rows) if q2p_rows else None)


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def text_to_query(model, sample_inputs: RelevanceInputs, target_positions: Sequence[int] | None = None,
                  start_layer: int = 0, end_layer: int | None = None) -> Tensor:
    """Text-to-Query relevance [T_answer, M] (raw, non-negative), one row per target answer token.

    Rows for several tokens of one word are aggregated by the mean (see `deco_core.analysis.explain.analyze_relevance`).
    """
    return token_relevance(model, sample_inputs, target_positions, start_layer, end_layer)[0]


@torch.no_grad()
def generate_answer(model, pixels: np.ndarray, prompt: str, max_new_tokens: int = 16) -> list[int]:
    """The model's greedy answer ids (cut before the first EOS) on the evaluation generation path."""
    from deco_core.eval.generate import encode_prompts

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        ids, mask = encode_prompts(model, [with_image_placeholder(prompt)])
        pixel_values = torch.as_tensor(pixels).unsqueeze(0).to(device)  # [1, 3, S, S]
        new = model.generate(ids.to(device), mask.to(device), pixel_values, max_new_tokens=max_new_tokens)[0]
    finally:
        model.train(was_training)
    out = new.tolist()
    eos = model.tokenizer.eos_token_id
    return out[: out.index(eos)] if eos in out else out


__all__ = ["ForwardPass", "RelevanceInputs", "build_inputs", "generate_answer",
           "group_words", "relevance_forward", "relevance_mode", "text_to_query", "token_relevance",
           "with_image_placeholder"]
