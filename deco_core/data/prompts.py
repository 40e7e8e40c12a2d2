"""Every prompt and special-token string, once: training corpora, converters, evaluation, serving and export
all build their text from these, so a prompt cannot drift between what a model is trained on and what it is
asked at evaluation."""

from __future__ import annotations

#: The placeholder a conversation's first human turn carries where the visual tokens go; also the tokenizer's
#: special token that the model expands into the projector's output tokens.
IMAGE_TOKEN = "<image>"
#: The offline tokenizer's other special tokens: padding, unknown word, begin and end of sequence. EOS_TOKEN also
#: closes every assistant turn of the vicuna_v1 templates (real tokenizers bring their own EOS string).
PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<unk>", "<s>", "</s>"
#: Vicuna v1's system line (LLaVA-1.5 ``conv_vicuna_v1``), the opening of the ``vicuna_v1`` template.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
#: LLaVA-1.5's suffix for short-answer questions (VQAv2, GQA, POPE, MME, ShapesWorld VQA).
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
#: LLaVA-1.5's suffix for multiple-choice questions (MMBench, ShapesWorld MC).
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
#: MME's own suffix; LLaVA swaps it for SHORT_ANSWER_SUFFIX (see metrics.md, MME).
MME_ORIGINAL_SUFFIX = "Please answer yes or no."
#: Referring expression comprehension (RefCOCO, ShapesWorld grounding); ``{ref}`` is the expression.
REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {ref}."
#: The short-caption request (ShapesWorld captioning eval).
DESCRIBE_PROMPT = "Describe the image briefly."
#: ShapesWorld's POPE question: "Is there a red circle in the image?"
POPE_TEMPLATE = "Is there {a} {colour} {shape} in the image?"


def rec_prompt(ref: str) -> str:
    """The REC question for one referring expression."""
    return REC_PROMPT.format(ref=ref)


def with_image(question: str) -> str:
    """The user turn with exactly one image placeholder: LLaVA style ``<image>\n{question}`` when it has none.

    Raises ValueError naming the prompt when it holds more than one (one image per sample)."""
    count = question.count(IMAGE_TOKEN)
    if count > 1:
        raise ValueError(f"prompt {question!r}: holds {count} {IMAGE_TOKEN!r} placeholders; expected at most one")
    return question if count == 1 else f"{IMAGE_TOKEN}\n{question.strip()}"
