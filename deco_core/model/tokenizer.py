"""Tokenizers: an offline word-level tokenizer trained on the ShapesWorld corpus with the special tokens the
templates need, saved as a transformers fast tokenizer; or any real tokenizer loaded from a path."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from deco_core.data.prompts import BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, PAD_TOKEN, UNK_TOKEN

if TYPE_CHECKING:
    from deco_core.config import TokenizerConfig


log = logging.getLogger(__name__)

SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN]
_SPACE = "\u2581"
# Punctuation is split off together with the space before it (" [" is one token "▁[", never a bare "▁" then
# "["); a '.' between digits stays inside the number so "0.12" is one token.
_PUNCT = Regex(_SPACE + r"?(?:\n|[\[\](),?!:;\"]|\.(?!\d))")
# Encoding splits special tokens out before pre-tokenizing, so training must too ("a</s>USER:" -> "a", "USER:").
_SPECIAL_SPLIT = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def _word_level(vocab: dict[str, int] | None = None) -> Tokenizer:
    model = models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN) if vocab else models.WordLevel(unk_token=UNK_TOKEN)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="never", split=True),
        pre_tokenizers.Split(_PUNCT, behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="never", split=True)
    return tok


def _coverage_texts(words: Iterable[str]) -> Iterator[str]:
    """Each word with and without a leading space (tokens exist in both forms)."""
    for w in words:
        yield f" {w}"
        yield f"({w}"


def train_word_tokenizer(texts: Iterable[str], words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Train a lossless word-level tokenizer on ``texts`` (+ every word in ``words``) and wrap it for transformers.

    Decoding restores the original spacing exactly (spaces are kept as a ▁ prefix on tokens).
    """
    tok = _word_level()
    trainer = trainers.WordLevelTrainer(vocab_size=100_000, min_frequency=1, special_tokens=SPECIAL_TOKENS)

    def stream() -> Iterator[str]:
        for text in texts:
            yield from _SPECIAL_SPLIT.split(text)
        yield from _coverage_texts(words)

    tok.train_from_iterator(stream(), trainer=trainer)
    fast = _wrap(tok)
    log.info("trained word-level tokenizer: %d tokens", len(fast))
    return fast


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer around our word-level ``tokenizers`` model and its special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=100_000, padding_side="right",
    )


@functools.lru_cache(maxsize=4)
def _shapes_tokenizer_json(seed: int, n_samples: int) -> str:
    """The trained ShapesWorld tokenizer, serialised; trained once per process and (seed, n_samples)."""
    from deco_core.data.conversation import template_strings
    from deco_core.data.shapes import make_corpus_text, shapes_vocabulary

    texts = list(make_corpus_text(n_samples, seed)) + template_strings()
    return train_word_tokenizer(texts, shapes_vocabulary()).backend_tokenizer.to_str()


def build_shapes_tokenizer(seed: int = 0, n_samples: int = 3000) -> PreTrainedTokenizerFast:
    """The default tiny-scale tokenizer: the ShapesWorld vocabulary plus the template strings.

    Training takes ~2 s (it generates the corpus text), so it runs once per process; every call returns a new,
    independent tokenizer object (callers may add tokens to theirs).
    """
    return _wrap(Tokenizer.from_str(_shapes_tokenizer_json(seed, n_samples)))


def load_tokenizer(cfg: TokenizerConfig, trust_remote_code: bool = False, seed: int = 0) -> PreTrainedTokenizerBase:
    """Load ``cfg.path`` (adding the image and pad tokens if missing) or build the ShapesWorld tokenizer."""
    if not cfg.path:
        return build_shapes_tokenizer(seed)
    tok = AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=trust_remote_code, use_fast=True)
    return ensure_special_tokens(tok)


def ensure_special_tokens(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Real tokenizers (e.g. Llama's) lack <image> and often a pad token: add them."""
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def vocab_digest(tok: PreTrainedTokenizerBase) -> str:
    """A short digest of the token -> id table: weights trained with one vocabulary are meaningless with another."""
    table = json.dumps(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))
    return hashlib.sha256(table.encode()).hexdigest()[:16]


def image_token_id(tok: PreTrainedTokenizerBase) -> int:
    tid = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    if tid is None or tid == tok.unk_token_id:
        raise ValueError(f"tokenizer has no {IMAGE_TOKEN} token; call ensure_special_tokens first")
    return int(tid)
