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
