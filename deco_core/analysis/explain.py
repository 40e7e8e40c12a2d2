"""One call from a model, an image and a prompt to the full R-GAE `RelevanceResult`: Text-to-Query from the
LLM (`relevance_model`), Query-to-Patch by the projector's declared method (`relevance_q2p`) and their product."""

from __future__ import annotations

import logging

from PIL import Image

from deco_core.analysis.relevance import (
    RelevanceResult,
    aggregate_words,
    grid_side,
    normalize_rows,
    text_to_patch,
)
from deco_core.analysis.relevance_model import build_inputs, generate_answer, image_pixels, token_relevance
from deco_core.analysis.relevance_q2p import q2p_method, query_to_patch

log = logging.getLogger(__name__)


def analyze_relevance(model, image: Image.Image, prompt: str, answer: str | None = None, max_new_tokens: int = 16,
                      start_layer: int = 0, end_layer: int | None = None) -> RelevanceResult:
    """Text-to-Query, Query-to-Patch and Text-to-Patch maps for one image and prompt.

    `answer` None: the greedy answer is generated first, then teacher-forced. Word rows are the mean of their
    tokens' raw rows, then divided by their maximum.
    """
    pixels = image_pixels(model, image)
    answer_ids = None
    if answer is None:
        answer_ids = generate_answer(model, pixels, prompt, max_new_tokens)
        log.info("generated answer: %r", model.tokenizer.decode(answer_ids))
        if not answer_ids:
            raise ValueError("relevance: the model generated an empty answer; give the answer to explain")
    inputs = build_inputs(model, pixels, prompt, answer, answer_ids)
    method = q2p_method(model)
    t2q, token_q2p = token_relevance(model, inputs, None, start_layer, end_layer,
                                     with_projector=method == "attention-rules")
    q2p = token_q2p.mean(dim=0) if token_q2p is not None else query_to_patch(model, inputs)
    token_t2p = text_to_patch(t2q, token_q2p if token_q2p is not None else q2p, normalize=False)  # [T, N]
    n_words = len(inputs.words)
    num_patches = q2p.shape[1]
    return RelevanceResult(
        prompt=inputs.prompt, answer=inputs.answer, projector=model.cfg.projector.name, q2p_method=method,
        tokens=inputs.tokens, words=inputs.words, word_index=inputs.word_index,
        t2q=normalize_rows(aggregate_words(t2q, inputs.word_index, n_words)),
        t2p=normalize_rows(aggregate_words(token_t2p, inputs.word_index, n_words)),
        q2p=q2p, token_t2q=t2q, token_t2p=token_t2p, patch_grid=grid_side(num_patches) or 0,
        query_grid=grid_side(q2p.shape[0]), token_q2p=token_q2p,
    )
