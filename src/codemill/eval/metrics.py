"""Scores with their exact definitions (notes/eval.md §4)."""

from __future__ import annotations

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


def bleu4(prediction: str, reference: str) -> float:
    """aiXcoder FIM-Eval's per-sample BLEU-4 (0-100): 13a tokens, no smoothing, brevity penalty, the
    maximum order lowered to the reference's length when it has fewer than 4 tokens, 100 on an exact
    match and 0 when either side is empty. Computed by sacrebleu."""
    import warnings

    from sacrebleu.metrics import BLEU
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    p, r = prediction.strip(), reference.strip()
    if not p or not r:
        return 0.0
    if p == r:
        return 100.0
    order = min(4, len(Tokenizer13a()(r).split()))
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # sacrebleu recommends effective_order for sentences; FIM-Eval does not
        return BLEU(max_ngram_order=order, smooth_method="none", tokenize="13a").sentence_score(p, [r]).score


def edit_similarity(prediction: str, reference: str) -> float:
    """0-100: rapidfuzz's `fuzz.ratio` (normalized Indel distance) of the stripped strings, as a float;
    CrossCodeEval's scripts round fuzzywuzzy's ratio to an integer per sample."""
    from rapidfuzz import fuzz

    return float(fuzz.ratio(prediction.strip(), reference.strip()))
