"""Paired differences of held-out bits per byte: one interval, one verdict rule, power, and the
compressor reference, shared by `codemill ablate` and the run report.

Why this interval: a seed's model is one draw shared by all its items, so the seed term is a t
interval over the per-seed differences (with 3 seeds the t quantile is 4.30, not 1.96); the items are
clustered by held-out repository (tasks of one repository share its style and vocabulary), so the item
term resamples whole repositories. Percentiles of a joint seed-and-item bootstrap cover 0.74-0.83 at
3 seeds (issue 36); this covers at least 0.93 at 3, 5 and 17 seeds (tests/test_ablate_stats.py).
"""

from __future__ import annotations

import gzip
import lzma
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95

# The margin every verdict is read against, fixed before the runs: recipes/ablate-cpu.yaml was sized
# for it (items resolve it at one seed), and at 7M parameters / 1M tokens the seeds swing the whole
# model by 0.02-0.04 bits per byte, so a smaller effect is below what a 2-hour CPU ablation can settle.
MARGIN = 0.02


@dataclass(frozen=True)
class Paired:
    """A − B in bits per byte pooled over items (their bits over their bytes) and averaged over seeds."""

    mean: float
    low: float
    high: float
    df: float  # degrees of freedom of the t quantile (see paired_interval)
    se: float
    seed_sd: float  # standard deviation of the per-seed differences (0 with one seed)
    item_se: float  # the repository-bootstrap standard error of the seed-averaged difference
    items: int
    groups: int
    each: list[float]  # the difference at each seed


def paired_interval(diff: np.ndarray, nbytes: np.ndarray, groups: np.ndarray, reps: int = 2000,
                    seed: int = 0, level: float = LEVEL) -> Paired | list[Paired]:  # fmt: skip
    """Interval for diff ([..., items, seeds]: each item's bits of A minus B at each seed) pooled by
    `nbytes` ([items]), items clustered by `groups` ([items], any labels).

    Variance = var(per-seed differences) / seeds + the item term: the variance of the seed-averaged
    pooled difference when whole groups are resampled (bootstrap, scaled by G/(G−1)). The item term
    also holds seed-by-item noise that the seed term counts, which errs wide. Degrees of freedom: seeds − 1
    when the seed term is the larger (the t interval over seeds), else Welch-Satterthwaite from seeds − 1
    and groups − 1. Leading
    dimensions of `diff` are independent data sets (a list of results comes back)."""
    diff = np.asarray(diff, dtype=np.float64)
    nbytes = np.asarray(nbytes, dtype=np.float64)
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    g = int(codes.max()) + 1
    onehot = np.zeros((len(codes), g))
    onehot[np.arange(len(codes)), codes] = 1.0
    k = diff.shape[-1]
    each = diff.sum(axis=-2) / nbytes.sum()  # [..., seeds]
    mean = each.mean(axis=-1)
    seed_var = each.var(axis=-1, ddof=1) / k if k > 1 else np.zeros_like(mean)
    weights = np.random.default_rng(seed).multinomial(g, np.full(g, 1.0 / g), size=reps).T  # [groups, reps]
    group_bits = diff.mean(axis=-1) @ onehot  # [..., groups]
    boot = (group_bits @ weights) / (nbytes @ onehot @ weights)
    item_var = boot.var(axis=-1, ddof=1) * g / (g - 1) if g > 1 else np.zeros_like(mean)
    var = seed_var + item_var
    denom = (seed_var**2 / (k - 1) if k > 1 else 0.0) + (item_var**2 / (g - 1) if g > 1 else 0.0)
    df = np.where(denom > 0, var**2 / np.where(denom > 0, denom, 1.0), np.inf)
    if k > 1:  # Welch-Satterthwaite undercovers (0.93) when a small seed variance is drawn by chance
        df = np.where(seed_var >= item_var, k - 1, df)
    se = np.sqrt(var)
    half = stats.t.ppf(0.5 + level / 2, df) * se
    flat = [np.ravel(x) for x in (mean, half, df, se, np.sqrt(seed_var * k), np.sqrt(item_var))]
    out = [
        Paired(m, m - h, m + h, d, s, sd, i, diff.shape[-2], g, e.tolist())
        for m, h, d, s, sd, i, e in zip(*(x.tolist() for x in flat), each.reshape(-1, k), strict=True)
    ]
    return out[0] if diff.ndim == 2 else out


def task_repository(task_id: str) -> str:
    """The held-out repository a fim-loss item names (FIM-Eval/<language>/<repository>/<path>#<type>,
    <repository>/<path>:<line>; an npm scope's slash kept), or the id itself (its own group)."""
    parts = task_id.split("/")
    parts = parts[2:] if parts[0] == "FIM-Eval" else parts
    if len(parts) < 2:
        return task_id
    return "/".join(parts[:2]) if parts[0].startswith("@") and len(parts) > 2 else parts[0]


def verdict(low: float, high: float, margin: float = MARGIN) -> str:
    """The page's wording rule (docs/results.md, Method), for A − B where negative favours A:
    detected when the interval excludes 0 (a two-sided test at 5%), its size said against the margin;
    otherwise excluded above X when the interval lies inside ±margin (X: its larger bound, an
    equivalence test at 2.5% a side), else cannot tell at the margin."""
    bound = max(abs(low), abs(high))
    if low > 0 or high < 0:
        who = "B" if low > 0 else "A"
        size = (
            "by at least"
            if min(abs(low), abs(high)) >= margin
            else "by less than"
            if bound < margin
            else "size unsettled at"
        )
        return f"detected, {who} better ({size} {margin:g})"
    if bound < margin:
        return f"not detected; excluded above {np.ceil(bound * 1000) / 1000:.3f}"
    return f"not detected; cannot tell at {margin:g}"


def power(seed_sd: float, seeds: int, item_se: float = 0.0, margin: float = MARGIN,
          level: float = LEVEL) -> float:  # fmt: skip
    """Probability that the interval excludes 0 when the true difference is `margin` (two-sided t
    test, noncentral t), at `seeds` seeds with the per-seed spread and item term measured."""
    se = np.sqrt(seed_sd**2 / seeds + item_se**2)
    df = max(seeds - 1, 1)
    crit = stats.t.ppf(0.5 + level / 2, df)
    ncp = margin / se
    wrong_side = stats.nct.cdf(-crit, df, ncp)  # scipy returns nan where this underflows (ncp ≳ 20)
    return float(stats.nct.sf(crit, df, ncp) + (0.0 if np.isnan(wrong_side) else wrong_side))


def seeds_for(
    seed_sd: float, item_se: float = 0.0, margin: float = MARGIN, target: float = 0.8
) -> int | None:
    """Fewest seeds whose power against `margin` reaches `target` (None past 200, or when the item term
    alone keeps it below)."""
    return next((k for k in range(2, 201) if power(seed_sd, k, item_se, margin) >= target), None)


def compressed_bits_per_byte(texts: list[str]) -> dict[str, float]:
    """gzip -9 and xz -9 bits per byte over `texts`, each file compressed alone and pooled by bytes, as
    the models score them: a model that does worse has learned less than a general-purpose compressor."""
    raw = [t.encode() for t in texts]
    total = sum(map(len, raw)) or 1
    return {
        "gzip -9": 8 * sum(len(gzip.compress(b, 9, mtime=0)) for b in raw) / total,
        "xz -9": 8 * sum(len(lzma.compress(b, preset=9)) for b in raw) / total,
    }
