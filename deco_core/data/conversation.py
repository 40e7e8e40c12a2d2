"""Conversation templates and label masking for the LLaVA conversation schema.

A conversation becomes a list of text segments, each either learned (assistant text) or masked (system, human
turns, image tokens). Segments are tokenized one by one and concatenated, so the label mask follows segment
boundaries exactly. ``<image>`` is expanded into exactly the projector's ``num_image_tokens`` image-token ids.

Templates (LLaVA ``llava/conversation.py``):
  * ``plain``     — ``<image>`` + caption + ``\\n``; the caption and newline are learned (alignment stage).
  * ``vicuna_v1`` — ``{system} USER: {q} ASSISTANT: {a}</s>USER: …``; only ``{a}</s>`` is learned.
  * ``vicuna_v1_nosys`` — the same without the system line (the tiny default: a model trained from scratch).

Truncation: a sequence longer than ``max_length`` is cut from the end; if the cut would reach the image tokens
or leave no learned token, the sample is rejected with ``SampleError("too_long")`` (never a silent wrong sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deco_core.data.prompts import EOS_TOKEN, IMAGE_TOKEN, VICUNA_SYSTEM

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
ROLES = {"human": "USER", "gpt": "ASSISTANT"}


class SampleError(ValueError):
    """A sample cannot be turned into a training example; ``reason`` is the counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Segment:
    text: str
    learn: bool


@dataclass
class Example:
    """One tokenized sample: ids and labels have equal length; labels are -100 where not learned."""

    input_ids: list[int]
    labels: list[int]
    num_image_tokens: int
    has_image: bool
    meta: dict[str, Any] = field(default_factory=dict)


def _check_turns(conversations: list[dict[str, Any]]) -> None:
    if not isinstance(conversations, list) or not conversations:
        raise SampleError("missing_keys", "'conversations' must be a non-empty list")
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise SampleError("missing_keys", f"turn {i} needs 'from' and 'value'")
        if turn["from"] not in ROLES:
            raise SampleError("unknown_role", f"turn {i} has from={turn['from']!r}; expected 'human' or 'gpt'")
        if not isinstance(turn["value"], str):
            raise SampleError("missing_keys", f"turn {i} 'value' must be a string")


def plain_segments(conversations: list[dict[str, Any]]) -> list[Segment]:
    """``<image>`` (masked) + the first assistant turn + '\\n' (learned)."""
    _check_turns(conversations)
    answers = [t["value"] for t in conversations if t["from"] == "gpt"]
    if not answers:
        raise SampleError("missing_keys", "plain template needs one 'gpt' turn (the caption)")
    return [Segment(IMAGE_TOKEN, False), Segment(answers[0].replace(IMAGE_TOKEN, "").strip() + "\n", True)]


def vicuna_v1_segments(conversations: list[dict[str, Any]], system: str = VICUNA_SYSTEM) -> list[Segment]:
    """Multi-turn ``vicuna_v1``; conversations must alternate human, gpt, human, gpt, …"""
    _check_turns(conversations)
    segs: list[Segment] = []
    prefix = system + " " if system else ""
    for i, turn in enumerate(conversations):
        expected = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise SampleError("bad_turn_order", f"turn {i} is from {turn['from']!r}; expected {expected!r}")
        if expected == "human":
            segs.append(Segment(f"{prefix}USER: {turn['value']} ASSISTANT:", False))
            prefix = ""
        else:
            segs.append(Segment(f" {turn['value']}{EOS_TOKEN}", True))
    if len(conversations) % 2:
        segs.pop()  # a trailing question with no answer teaches nothing
    return segs


def vicuna_v1_nosys_segments(conversations: list[dict[str, Any]]) -> list[Segment]:
    """``vicuna_v1`` without the system line (``USER: {q} ASSISTANT: {a}</s>``): ~30 fewer tokens per sample,
    for models trained from scratch, where the fixed sentence teaches nothing."""
    return vicuna_v1_segments(conversations, system="")


# name -> (segments builder, system line of the generation prompt; None = no chat prompt)
TEMPLATES = {
    "plain": (plain_segments, None),
    "vicuna_v1": (vicuna_v1_segments, VICUNA_SYSTEM),
    "vicuna_v1_nosys": (vicuna_v1_nosys_segments, ""),
}


def prompt_text(question: str, template: str = "vicuna_v1") -> str:
    """The generation prompt for one question in ``template`` (the assistant's answer follows it)."""
    get_template(template)
    system = TEMPLATES[template][1]
    if system is None:
        return IMAGE_TOKEN
    return f"{system + ' ' if system else ''}USER: {question} ASSISTANT:"


def template_strings() -> list[str]:
    """Every fixed string the templates emit (so an offline tokenizer can cover them)."""
    image, eos = IMAGE_TOKEN, EOS_TOKEN
    return [f"{VICUNA_SYSTEM} USER: {image}\nq ASSISTANT: a{eos}USER: q ASSISTANT: a{eos}", f"{image}a\n",
            f"USER: {image}\nq ASSISTANT: a{eos}"]


def get_template(name: str):
    if name not in TEMPLATES:
        raise KeyError(f"unknown template {name!r}; valid: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name][0]


def tokenize_segments(
    segments: list[Segment],
    tokenizer: PreTrainedTokenizerBase,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int,
    has_image: bool,
    add_bos: bool = True,
) -> Example:
    """Tokenize segments, expand the image token and build labels; see the module docstring for truncation."""
    ids: list[int] = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    n_image = 0
    for seg in segments:
        seg_ids = tokenizer(seg.text, add_special_tokens=False)["input_ids"]
        for tid in seg_ids:
            if tid == image_token_id:
                if not has_image:
                    raise SampleError("image_mismatch", "text has <image> but the sample has no image")
                n_image += 1
                ids.extend([image_token_id] * num_image_tokens)
                labels.extend([IGNORE_INDEX] * num_image_tokens)
            else:
                ids.append(tid)
                labels.append(tid if seg.learn else IGNORE_INDEX)
    if has_image and n_image != 1:
        raise SampleError("image_mismatch", f"expected exactly one <image> in the text, found {n_image}")
    if len(ids) > max_length:
        last_image = max((i for i, t in enumerate(ids) if t == image_token_id), default=-1)
        if last_image >= max_length or all(lab == IGNORE_INDEX for lab in labels[:max_length]):
            raise SampleError("too_long", f"{len(ids)} tokens > max_length={max_length} and truncation would "
                                          "cut image tokens or every learned token")
        ids, labels = ids[:max_length], labels[:max_length]
    return Example(ids, labels, num_image_tokens if has_image else 0, has_image)


def ensure_image_placeholder(conversations: list[dict[str, Any]], has_image: bool) -> list[dict[str, Any]]:
    """LLaVA convention: an image sample without ``<image>`` in its text gets it prepended to the first turn."""
    if not has_image or any(IMAGE_TOKEN in t.get("value", "") for t in conversations):
        return conversations
    first = dict(conversations[0])
    first["value"] = f"{IMAGE_TOKEN}\n{first['value']}"
    return [first, *conversations[1:]]


def preprocess_conversation(
    conversations: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int,
    has_image: bool,
) -> Example:
    """Schema conversation -> ``Example`` (ids, labels with -100 on non-learned tokens)."""
    _check_turns(conversations)
    if template == "plain" and not has_image:
        raise SampleError("image_mismatch", "the plain template needs an image")
    convs = ensure_image_placeholder(conversations, has_image) if template != "plain" else conversations
    segments = get_template(template)(convs)
    if not any(s.learn for s in segments):
        raise SampleError("missing_keys", "conversation has no assistant turn to learn")
    return tokenize_segments(segments, tokenizer, image_token_id, num_image_tokens, max_length, has_image)
