"""Dependency-free CIDEr-D for captioning, following the pycocoevalcap 1.2 `Cider` scorer's arithmetic.

Differences from the official pipeline: the tokenizer here is a plain lower-case + punctuation-to-space split,
not the Java Stanford PTB tokenizer (which splits clitics such as "n't"/"'s" differently), so scores can
differ slightly from pycocoevalcap; use pycocoevalcap itself for published numbers.
"""

from __future__ import annotations

import logging
import math
import string
from collections import Counter
from collections.abc import Sequence

logger = logging.getLogger(__name__)

_MAX_N = 4  # n-gram orders 1..4
_SIGMA = 6.0  # Gaussian length-penalty width
_SCALE = 10.0  # CIDEr-D's constant factor (papers additionally report x100)
_PUNCT_TO_SPACE = str.maketrans({ch: " " for ch in string.punctuation})

NgramCounts = Counter[tuple[str, ...]]  # n-gram -> term frequency
# (per-order weights, per-order L2 norms, length in bigrams)
_Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]


def tokenize_caption(text: str) -> list[str]:
    """Lower-case, turn every ASCII punctuation character into a space, split on whitespace."""
    return text.lower().translate(_PUNCT_TO_SPACE).split()


def _ngram_counts(text: str) -> NgramCounts:
    """Term frequencies of all 1..4-grams of the tokenised caption."""
    tokens = tokenize_caption(text)
    counts: NgramCounts = Counter()
    for n in range(1, _MAX_N + 1):
        for start in range(len(tokens) - n + 1):
            counts[tuple(tokens[start : start + n])] += 1
    return counts


class _TfIdf:
    """TF-IDF vectors split by n-gram order, with IDF taken from the evaluated set's references."""

    def __init__(self, ref_counts: Sequence[Sequence[NgramCounts]]) -> None:
        self.doc_freq: NgramCounts = Counter()
        for refs in ref_counts:  # one "document" per evaluated item: the union of its references' n-grams
            self.doc_freq.update(set().union(*(c.keys() for c in refs)))
        self.log_n_docs = math.log(float(len(ref_counts)))

    def vector(self, counts: NgramCounts) -> _Vector:
        """Per-order weights, per-order L2 norms and the caption length (counted in bigrams, as the reference)."""
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(_MAX_N)]
        sq_norms = [0.0] * _MAX_N
        length = 0
        for ngram, tf in counts.items():
            order = len(ngram) - 1
            weight = tf * (self.log_n_docs - math.log(max(1.0, self.doc_freq[ngram])))
            vec[order][ngram] = weight
            sq_norms[order] += weight * weight
            if order == 1:
                length += tf
        return vec, [math.sqrt(s) for s in sq_norms], length


def _similarity(hyp: _Vector, ref: _Vector) -> list[float]:
    """CIDEr-D similarity per n-gram order: clipped cosine times a Gaussian penalty on the length gap."""
    (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
    penalty = math.exp(-((len_h - len_r) ** 2) / (2 * _SIGMA**2))
    sims = []
    for order in range(_MAX_N):
        dot = sum(
            min(w, vec_r[order].get(g, 0.0)) * vec_r[order].get(g, 0.0) for g, w in vec_h[order].items()
        )
        if norm_h[order] != 0 and norm_r[order] != 0:
            dot /= norm_h[order] * norm_r[order]
        sims.append(dot * penalty)
    return sims


def cider_per_item(predictions: list[str], references: list[list[str]]) -> list[float]:
    """CIDEr-D of each prediction against its references, with IDF from all `references` given together."""
    if len(predictions) != len(references):
        raise ValueError(f"cider: {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("cider: no items to score")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"cider: items {empty[:5]} have no reference captions; expected >= 1 each")
    if len(predictions) == 1:
        logger.warning("cider: a single item gives every n-gram IDF 0, so its score is 0")
    ref_counts = [[_ngram_counts(r) for r in refs] for refs in references]
    tfidf = _TfIdf(ref_counts)
    scores = []
    for pred, refs in zip(predictions, ref_counts, strict=True):
        hyp = tfidf.vector(_ngram_counts(pred))
        summed = [0.0] * _MAX_N
        for ref in refs:
            summed = [s + v for s, v in zip(summed, _similarity(hyp, tfidf.vector(ref)), strict=True)]
        scores.append(_SCALE * (sum(summed) / _MAX_N) / len(refs))
    return scores


def cider(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus CIDEr-D (n = 1..4, sigma = 6, clipping, x10): the mean of `cider_per_item`.

    IDF comes from the references of the evaluated set, so an item's score depends on the rest of the set.
    """
    scores = cider_per_item(predictions, references)
    return sum(scores) / len(scores)
