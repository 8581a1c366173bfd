"""Scores with their exact definitions (notes/eval.md §4)."""

from __future__ import annotations

import functools
import keyword
import re

import numpy as np


def pass_at_k(n: list[int], c: list[int | bool], k: int) -> float:
    """The unbiased pass@k estimator (Chen et al. 2021), averaged over problems: 1 - C(n-c, k) / C(n, k)
    per problem with n samples of which c passed; greedy n = 1 gives the fraction passed."""
    scores = []
    for ni, ci in zip(n, c, strict=True):
        ci = int(ci)
        if ni < k:
            raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {ni}")
        if ni - ci < k:
            scores.append(1.0)
        else:
            scores.append(1.0 - float(np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1))))
    return float(np.mean(scores)) if scores else 0.0


@functools.cache
def _bleu(order: int):
    import logging

    from sacrebleu.metrics import BLEU

    logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # it recommends effective_order; FIM-Eval does not
    return BLEU(max_ngram_order=order, smooth_method="none", tokenize="13a")


def bleu4(prediction: str, reference: str) -> float:
    """aiXcoder FIM-Eval's per-sample BLEU-4 (0-100): 13a tokens, no smoothing, brevity penalty, the
    maximum order lowered to the reference's length when it has fewer than 4 tokens, 100 on an exact
    match (two empty ones included) and 0 when one side is empty. Computed by sacrebleu."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    p, r = prediction.strip(), reference.strip()
    if p == r:  # first, as aiXcoder: two empty middles match
        return 100.0
    if not p or not r:
        return 0.0
    return _bleu(min(4, len(Tokenizer13a()(r).split()))).sentence_score(p, [r]).score


def edit_similarity(prediction: str, reference: str) -> float:
    """FIM-Eval's extra column (0-100): rapidfuzz's `fuzz.ratio` (normalized Indel distance) of the
    stripped strings, unrounded; CrossCodeEval's is `cceval_edit_similarity`."""
    from rapidfuzz import fuzz

    return float(fuzz.ratio(prediction.strip(), reference.strip()))


# ---- CrossCodeEval as cceval scores it ---------------------------------------------------------
# Rules from amazon-science/cceval @25f9cab, scripts/eval_metric.py and scripts/eval_utils.py (Apache
# License 2.0), written here; the keyword lists are its scripts/keywords/*.txt (from Microsoft's
# dpu-utils, MIT License) and, for Python, `keyword.kwlist` without True and False.

_CCEVAL_KEYWORDS = {
    "Python": " ".join(k for k in keyword.kwlist if k not in ("True", "False")),
    "Java": """abstract assert boolean break byte case catch char class continue default do double
        else enum extends final finally float for if implements import instanceof int interface long native
        new package private protected public return short static strictfp super switch synchronized this
        throw throws transient try void volatile while var const goto""",
    # cceval's typescript.txt is its javascript.txt: `number`, `string`, `any`, `await`, `true` count as names
    "TypeScript": """break case catch class const continue debugger default delete do else export
        extends finally for function if import in instanceof new return super switch this throw try typeof
        var void while with yield enum implements interface let package private protected public
        static""",
    "C#": """abstract as base bool break byte case catch char checked class const continue decimal
        default delegate do double else enum event explicit extern finally fixed float for foreach goto if
        implicit in int interface internal is lock long namespace new null object operator out override
        params private protected public readonly ref return sbyte sealed short sizeof stackalloc static
        string struct switch this throw try typeof uint ulong unchecked unsafe ushort using virtual void
        volatile while""",
}  # fmt: skip
CCEVAL_KEYWORDS = {k: frozenset(v.split()) for k, v in _CCEVAL_KEYWORDS.items()}
_CCEVAL_STRING = re.compile(r'"([^"\\]*(\\.[^"\\]*)*)"' + r"|'([^'\\]*(\\.[^'\\]*)*)'")
_WORD = re.compile(r"\w+")
_NAME_START = re.compile(r"[_a-zA-Z]")


def cceval_strip_comments(code: str) -> str:
    """cceval's comment removal, the same in every language: `#` to the line end, then `//` to the
    line end (so `"#fff"` in Java and `a // b` in Python lose their tails too)."""
    return re.sub(r"//.*", "", re.sub(r"#.*", "", code))


def cceval_lines(code: str) -> list[str]:
    r"""What cceval's exact match compares: the stripped non-empty lines, split at `\n` only."""
    return [line.strip() for line in code.split("\n") if line.strip()]


def cceval_identifiers(code: str, language: str) -> list[str]:
    r"""cceval's identifiers, in order: string literals removed, then the `\w+` tokens that start
    with a letter or `_` and are not in its keyword list (`0x1fc7` yields none)."""
    words = _WORD.findall(_CCEVAL_STRING.sub("", code))
    return [w for w in words if _NAME_START.match(w) and w not in CCEVAL_KEYWORDS[language]]


def identifier_scores(prediction: str, reference: str, language: str) -> tuple[bool, float]:
    """(identifier exact match, identifier F1) as cceval: equal identifier lists; F1 over the two
    sets, 0 when neither has an identifier."""
    p, r = cceval_identifiers(prediction, language), cceval_identifiers(reference, language)
    tp = len(set(p) & set(r))
    wrong = len(set(p) ^ set(r))  # false positives plus false negatives
    return p == r, 2 * tp / (2 * tp + wrong) if tp or wrong else 0.0


def cceval_edit_similarity(prediction: str, reference: str) -> int:
    """cceval's per-sample edit similarity: fuzzywuzzy's `fuzz.ratio` of the stripped strings with
    python-Levenshtein installed (100 when equal, 0 when one is empty, else the normalized Indel
    similarity times 100, rounded half to even); rapidfuzz computes the same similarity."""
    from rapidfuzz.distance import Indel

    p, r = prediction.strip(), reference.strip()
    if p == r:
        return 100
    if not p or not r:
        return 0
    return round(100 * Indel.normalized_similarity(p, r))
