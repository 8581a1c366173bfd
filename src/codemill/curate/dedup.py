"""Exact and near deduplication, with the paper's cluster reduction: the algorithms, on arrays.

Exact: files with equal SHA-256; the best-ranked copy stays. Near: files sharing an LSH bucket of a
MinHash band are candidate pairs; every pair is verified with the exact Jaccard of its shingle
sets; connected components of the verified pairs are clusters; in each cluster a greedy pass in
rank order keeps a file unless it is similar to a file already kept, so every removed file has a
kept file at Jaccard >= threshold (a covering set, as in CodeParrot's `find_extremes`, made
order-independent by the rank). dedup_steps.py runs these on shards of the corpus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from codemill.curate.minhash import jaccard

HEADS = 8  # members of an oversized bucket that are paired with all the others


@dataclass
class Removal:
    index: int
    reason: str  # exact_duplicate | near_duplicate
    cluster: int
    kept: int  # index of the kept file it duplicates
    similarity: float


def exact(sha256: list[str], rank: np.ndarray) -> list[Removal]:
    """Every file but the best-ranked of each SHA-256, with the file it duplicates."""
    if not len(sha256):
        return []
    sha = np.asarray(sha256, dtype=object)
    order = np.argsort(rank, kind="stable")
    order = order[np.argsort(sha[order], kind="stable")]  # by hash, then rank
    s = sha[order]
    first = np.r_[True, s[1:] != s[:-1]]
    kept = order[np.maximum.accumulate(np.where(first, np.arange(len(s)), 0))]
    return [
        Removal(int(i), "exact_duplicate", int(k), int(k), 1.0)
        for i, k in zip(order[~first], kept[~first], strict=True)
    ]


def bucket_pairs(keys: np.ndarray, ids: np.ndarray, max_bucket: int) -> np.ndarray:
    """(i, j), i < j, of files sharing a band key: all pairs in a bucket of up to max_bucket
    files, and in a larger one the pairs of its first HEADS members (by id) with all the rest."""
    order = np.lexsort((ids, keys))
    sk, si = keys[order], ids[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]]) if len(sk) else np.empty(0, np.int64)
    sizes = np.diff(np.r_[starts, len(sk)])
    out = []
    for s, n in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
        members = si[s : s + n]
        a, b = np.triu_indices(n, 1)
        if n > max_bucket:
            keep = a < HEADS
            a, b = a[keep], b[keep]
        out.append(np.stack([members[a], members[b]], axis=1))
    return np.concatenate(out) if out else np.empty((0, 2), ids.dtype)


def candidate_pairs(bands: np.ndarray, active: np.ndarray, max_bucket: int) -> set[tuple[int, int]]:
    """bucket_pairs over every band of an in-memory (files x bands) matrix."""
    idx = np.flatnonzero(active)
    pairs: set[tuple[int, int]] = set()
    for b in range(bands.shape[1]):
        pairs.update(map(tuple, bucket_pairs(bands[idx, b], idx, max_bucket).tolist()))
    return pairs


def cover(
    pairs: np.ndarray, sims: np.ndarray, rank: np.ndarray
) -> tuple[dict[int, tuple[int, float]], np.ndarray]:
    """Clusters and covering sets over verified similar pairs of nodes 0..n-1.

    Returns removed node -> (kept node it is closest to, similarity), and every node's cluster
    (its best-ranked member). Memory grows with the pairs, not with the corpus."""
    n = len(rank)
    if n == 0:
        return {}, np.empty(0, np.int64)
    graph = coo_matrix((sims, (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    graph = graph.maximum(graph.T).tocsr()
    _, label = connected_components(graph, directed=False)
    by_rank = np.argsort(rank, kind="stable")
    cluster_head = np.full(label.max() + 1, -1)
    cluster_of = np.empty(n, np.int64)
    removed: dict[int, tuple[int, float]] = {}
    is_kept = np.zeros(n, bool)
    for m in by_rank:
        if cluster_head[label[m]] < 0:
            cluster_head[label[m]] = m
        cluster_of[m] = cluster_head[label[m]]
        row = slice(graph.indptr[m], graph.indptr[m + 1])
        nb, s = graph.indices[row], graph.data[row]
        close = is_kept[nb]
        if close.any():
            nb, s = nb[close], s[close]
            best = np.lexsort((nb, s))[-1]  # highest similarity, then highest node
            removed[int(m)] = (int(nb[best]), float(s[best]))
        else:
            is_kept[m] = True
    return removed, cluster_of


def near(
    pairs: set[tuple[int, int]],
    shingles: Callable[[int], np.ndarray],
    rank: np.ndarray,
    threshold: float,
) -> tuple[list[Removal], list[tuple[int, int, float]], dict[int, int]]:
    """Verify, cluster and reduce in memory: removals, verified similar pairs, cluster of each file."""
    similar = [(i, j, s) for i, j in sorted(pairs) if (s := jaccard(shingles(i), shingles(j))) >= threshold]
    nodes = np.unique(np.array([(i, j) for i, j, _ in similar], np.int64).reshape(-1))
    local = np.searchsorted(nodes, np.array([(i, j) for i, j, _ in similar], np.int64).reshape(-1, 2))
    removed, cluster_of = cover(local, np.array([s for *_, s in similar]), rank[nodes])
    removals = [
        Removal(int(nodes[m]), "near_duplicate", int(nodes[cluster_of[m]]), int(nodes[k]), s)
        for m, (k, s) in sorted(removed.items())
    ]
    return removals, similar, {int(nodes[m]): int(nodes[c]) for m, c in enumerate(cluster_of)}
