"""Exact and near deduplication over the whole corpus, with the paper's cluster reduction.

Exact: files with equal SHA-256; the best-ranked copy stays. Near: LSH buckets over MinHash bands
give candidate pairs; every pair is verified with the exact Jaccard of its shingle sets; union-find
makes clusters; in each cluster a greedy pass in rank order keeps a file unless it is similar to a
file already kept, so every removed file has a kept file at Jaccard >= threshold (a covering set,
as in CodeParrot's `find_extremes`, made order-independent by the rank).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from codemill.curate.minhash import jaccard


@dataclass
class Removal:
    index: int
    reason: str  # exact_duplicate | near_duplicate
    cluster: int
    kept: int  # index of the kept file it duplicates
    similarity: float


def exact(sha256: list[str], rank: np.ndarray) -> list[Removal]:
    best: dict[str, int] = {}
    for i in np.argsort(rank, kind="stable"):
        best.setdefault(sha256[i], int(i))
    out = []
    for i, h in enumerate(sha256):
        if best[h] != i:
            out.append(Removal(i, "exact_duplicate", best[h], best[h], 1.0))
    return out


def candidate_pairs(bands: np.ndarray, active: np.ndarray, max_bucket: int) -> set[tuple[int, int]]:
    """(i, j), i < j, sharing a band key; a huge bucket is linked to its first members only."""
    pairs: set[tuple[int, int]] = set()
    idx = np.flatnonzero(active)
    for b in range(bands.shape[1]):
        keys = bands[idx, b]
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        ends = np.r_[starts[1:], len(sk)]
        for s, e in zip(starts, ends, strict=True):
            if e - s < 2:
                continue
            members = np.sort(idx[order[s:e]])
            heads = members if len(members) <= max_bucket else members[:8]
            for a_pos, a in enumerate(heads):
                for c in members[a_pos + 1 :]:
                    pairs.add((int(a), int(c)))
    return pairs


def near(
    pairs: set[tuple[int, int]],
    shingles: Callable[[int], np.ndarray],
    rank: np.ndarray,
    threshold: float,
) -> tuple[list[Removal], list[tuple[int, int, float]], dict[int, int]]:
    """Verify pairs, cluster, reduce; returns removals, the verified similar pairs, and the
    cluster (its best-ranked member) of every file in a cluster."""
    similar = []
    for i, j in sorted(pairs):
        s = jaccard(shingles(i), shingles(j))
        if s >= threshold:
            similar.append((i, j, s))
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    neighbours: dict[int, dict[int, float]] = defaultdict(dict)
    for i, j, s in similar:
        neighbours[i][j] = neighbours[j][i] = s
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj, key=lambda r: rank[r])] = min(ri, rj, key=lambda r: rank[r])
    clusters: dict[int, list[int]] = defaultdict(list)
    for x in parent:
        clusters[find(x)].append(x)
    removals, cluster_of = [], {}
    for members in clusters.values():
        members.sort(key=lambda m: rank[m])
        cluster_id = members[0]
        kept: list[int] = []
        for m in members:
            cluster_of[m] = cluster_id
            close = [(neighbours[m][k], k) for k in kept if k in neighbours[m]]
            if close:
                s, k = max(close)
                removals.append(Removal(m, "near_duplicate", cluster_id, k, s))
            else:
                kept.append(m)
    return removals, similar, cluster_of
