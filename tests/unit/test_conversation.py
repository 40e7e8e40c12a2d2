"""Templates and label masking: ids/labels equal hand-written expectations for plain, vicuna_v1 and text-only."""

from __future__ import annotations

import pytest

from deco_core.data.conversation import (
    IGNORE_INDEX,
    VICUNA_SYSTEM,
    SampleError,
    preprocess_conversation,
    template_strings,
)
from deco_core.model.tokenizer import image_token_id, train_word_tokenizer

M = 4  # projector tokens in these tests


@pytest.fixture(scope="module")
def tok():
    texts = ["a red circle at the top left.", "What colour is the circle? red", "How many? two"] + template_strings()
    return train_word_tokenizer(texts, ["red", "two", "circle"])


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_plain_learns_caption_and_newline_only(tok):
    """plain: BOS and the M image tokens are masked; the caption and '\\n' are learned."""
    conv = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a red circle at the top left."}]
    ex = preprocess_conversation(conv, tok, "plain", image_token_id(tok), M, 64, has_image=True)
    caption = _ids(tok, "a red circle at the top left.\n")
    img = image_token_id(tok)
    assert ex.input_ids == [tok.bos_token_id] + [img] * M + caption
    assert ex.labels == [IGNORE_INDEX] * (1 + M) + caption
    assert ex.num_image_tokens == M


def test_vicuna_multi_turn_masks_system_and_human(tok):
    """vicuna_v1: only each answer and its </s> are learned, across two rounds."""
    conv = [
        {"from": "human", "value": "<image>\nWhat colour is the circle?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "How many?"},
        {"from": "gpt", "value": "two"},
    ]
    ex = preprocess_conversation(conv, tok, "vicuna_v1", image_token_id(tok), M, 256, has_image=True)
    img = image_token_id(tok)
    q1 = _ids(tok, f"{VICUNA_SYSTEM} USER: <image>\nWhat colour is the circle? ASSISTANT:")
    k = q1.index(img)
    q1 = q1[:k] + [img] * M + q1[k + 1:]
    a1 = _ids(tok, " red</s>")
    q2 = _ids(tok, "USER: How many? ASSISTANT:")
    a2 = _ids(tok, " two</s>")
    assert ex.input_ids == [tok.bos_token_id] + q1 + a1 + q2 + a2
    masked = [IGNORE_INDEX]
    assert ex.labels == masked * (1 + len(q1)) + a1 + masked * len(q2) + a2
    assert a1[-1] == tok.eos_token_id


def test_text_only_sample_has_no_image_tokens(tok):
    """A text-only vicuna_v1 sample has no image tokens and learns its answer."""
    conv = [{"from": "human", "value": "How many?"}, {"from": "gpt", "value": "two"}]
    ex = preprocess_conversation(conv, tok, "vicuna_v1", image_token_id(tok), M, 256, has_image=False)
    assert image_token_id(tok) not in ex.input_ids
    assert ex.num_image_tokens == 0 and not ex.has_image
    learned = [t for t in ex.labels if t != IGNORE_INDEX]
    assert learned == _ids(tok, " two</s>")


def test_segment_tokenization_matches_whole_string(tok):
    """Tokenizing segment by segment gives the same ids as tokenizing the whole prompt at once."""
    conv = [{"from": "human", "value": "What colour is the circle?"}, {"from": "gpt", "value": "red"}]
    ex = preprocess_conversation(conv, tok, "vicuna_v1", image_token_id(tok), M, 256, has_image=False)
    whole = _ids(tok, f"{VICUNA_SYSTEM} USER: What colour is the circle? ASSISTANT: red</s>")
    assert ex.input_ids[1:] == whole


def test_image_without_placeholder_gets_one_prepended(tok):
    """An image sample whose text lacks <image> gets it before the first question (LLaVA convention)."""
    conv = [{"from": "human", "value": "How many?"}, {"from": "gpt", "value": "two"}]
    ex = preprocess_conversation(conv, tok, "vicuna_v1", image_token_id(tok), M, 256, has_image=True)
    assert ex.input_ids.count(image_token_id(tok)) == M


@pytest.mark.parametrize(
    ("conv", "has_image", "reason"),
    [
        ([{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "two"}], False, "unknown_role"),
        ([{"from": "human"}], False, "missing_keys"),
        ([{"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "two"}], False, "image_mismatch"),
        ([{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "two"}], True, "image_mismatch"),
        ([{"from": "gpt", "value": "two"}, {"from": "human", "value": "How many?"}], False, "bad_turn_order"),
    ],
)
def test_bad_samples_raise_with_reason(tok, conv, has_image, reason):
    """Malformed conversations raise SampleError carrying the counter name."""
    with pytest.raises(SampleError) as err:
        preprocess_conversation(conv, tok, "vicuna_v1", image_token_id(tok), M, 256, has_image=has_image)
    assert err.value.reason == reason


def test_truncation_never_cuts_image_tokens(tok):
    """A max_length that would cut into the image tokens rejects the sample; a longer one truncates the tail."""
    conv = [{"from": "human", "value": "<image>\nWhat colour is the circle?"}, {"from": "gpt", "value": "red"}]
    img = image_token_id(tok)
    with pytest.raises(SampleError, match="too_long"):
        preprocess_conversation(conv, tok, "vicuna_v1", img, 32, 20, has_image=True)
    full = preprocess_conversation(conv, tok, "vicuna_v1", img, M, 256, has_image=True)
    cut = preprocess_conversation(conv, tok, "vicuna_v1", img, M, len(full.input_ids) - 1, has_image=True)
    assert cut.input_ids == full.input_ids[:-1] and cut.labels == full.labels[:-1]
