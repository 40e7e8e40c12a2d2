"""Open-ended VQA scoring: VQAv2 answer normalisation, leave-one-out VQA accuracy and GQA exact match.

Pinned to the official VQAv2 evaluator (GT-Vision-Lab/VQA `vqaEval.py`, 2021-03 revision), quirks included;
see /work/shared/reference/metrics.md ("VQAv2 accuracy") for the rules and how other harnesses differ.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

# Characters handled by the punctuation rule; the apostrophe and : % # $ & * ~ ^ | are deliberately absent.
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
# A comma between two digits ("1,000") switches the punctuation rule from "replace by space" to "delete".
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A dot not followed by a digit is dropped ("3." -> "3", "3.5" kept). The reference passes re.UNICODE (=32)
# as the `count` argument of `sub`, so at most 32 dots are removed per string; we keep that cap.
_DOT_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_MAX_DOTS_REMOVED = int(re.UNICODE)

_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Apostrophe-less spelling -> contracted form, as listed by the reference evaluator (120 entries). Lookups
# happen after lower-casing, so the capitalised keys (Im, Ive, Id've, I'dve) can never fire; and the
# reference maps "somebody'd" to "somebodyd" (reversed). Both quirks are kept for score parity.
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip


def _clean_whitespace(text: str) -> str:
    """Step 1: newlines and tabs become spaces, then outer whitespace is stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _apply_punctuation_rule(text: str) -> str:
    """Step 3: delete or space out each punctuation mark, then drop dots that do not precede a digit."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        # The test looks at the *original* string, not the progressively edited one.
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _DOT_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_DOTS_REMOVED)


def _apply_word_rules(text: str) -> str:
    """Step 4: lower-case, map number words to digits, drop articles, restore contractions, re-join."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(s: str) -> str:
    """Apply the full official VQAv2 answer processing (whitespace, punctuation, period, word rules).

    >>> normalize_vqa_answer("Two dogs.")
    '2 dogs'
    """
    return _apply_word_rules(_apply_punctuation_rule(_clean_whitespace(s)))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Official VQAv2 accuracy of one prediction against its ground-truth answers, in [0, 1].

    Each entry of `answers` is one annotator answer (the official GT items carry distinct `answer_id`s, so no
    two entries collapse). Answers and prediction are whitespace-cleaned; the full normalisation is applied to
    both sides **only when the answers disagree** — when they are all identical the comparison is raw, so
    "Two" against ten "2" scores 0. Score = mean over i of min(1, #{j != i : answers[j] == pred} / 3), which
    for ten answers with m matches gives 0, 0.3, 0.6, 0.9, 1.0 for m = 0, 1, 2, 3, >= 4.
    """
    if not answers:
        raise ValueError(
            f"vqa_accuracy: `answers` is empty for prediction {prediction!r}; expected >= 1 answer"
        )
    gts = [_clean_whitespace(a) for a in answers]
    pred = _clean_whitespace(prediction)
    if len(set(gts)) > 1:
        gts = [normalize_vqa_answer(a) for a in gts]
        pred = normalize_vqa_answer(pred)
    matches = sum(gt == pred for gt in gts)
    total = 0.0
    for gt in gts:
        others_matching = matches - (gt == pred)  # leave this annotator out
        total += min(1.0, others_matching / 3.0)
    return total / len(gts)


def exact_match(prediction: str, answer: str) -> float:
    """GQA accuracy of one item: 1.0 iff the strings are exactly equal, else 0.0 (official GQA `eval.py`).

    No normalisation at all — not even case or whitespace. Harnesses pre-process differently (LLaVA applies
    `rstrip('.').lower()` to the prediction before scoring; lmms-eval strips punctuation and case); do such
    pre-processing explicitly at the call site and record which variant was used.
    """
    return 1.0 if prediction == answer else 0.0
