"""Algorithm 1 of the paper: the order in which a repository's files enter the training stream.

One strategy per repository, drawn with the recipe's probabilities (paper: content 30, path 30,
dependency 30, random 10). Choices the paper leaves open, made here:
- content: TF-IDF over identifiers, KMeans with k = min(randint(1, 20), files); clusters in random
  order, files of a cluster from the most central outwards;
- path: a walk over the K-nearest-neighbour graph of paths (directory prefixes and file-name words,
  TF-IDF, cosine), from a random file to its nearest unvisited neighbour, jumping to a random
  unvisited file when the neighbourhood is exhausted;
- dependency: imports before importers, cycles broken by fewest unplaced dependencies (deps.py).
"""

from __future__ import annotations

import random
import re

import numpy as np
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.neighbors import NearestNeighbors

from codemill.data.deps import dependencies, dependency_order
from codemill.data.repo import SourceFile

STRATEGIES = ("content", "path", "dependency", "random")
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]+"
_WORD = re.compile(r"[A-Za-z0-9]+")


def draw(probs: dict[str, float], rng: random.Random) -> str:
    """A key of `probs` drawn with its probability (the values need not sum to one)."""
    x = rng.random() * sum(probs.values())
    for key, p in probs.items():
        x -= p
        if x < 0:
            return key
    return key


def content_order(files: list[SourceFile], rng: random.Random, max_clusters: int) -> list[int]:
    n = len(files)
    try:
        x = TfidfVectorizer(token_pattern=IDENTIFIER, lowercase=False, sublinear_tf=True, dtype=np.float32)
        x = x.fit_transform([f.text for f in files])
    except ValueError:  # no identifiers at all: one cluster
        return rng.sample(range(n), n)
    k = min(rng.randint(1, max_clusters), n)
    km = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=rng.randrange(2**31))
    labels = km.fit_predict(x)
    dist = km.transform(x)[np.arange(n), labels]
    clusters = sorted(set(labels.tolist()))
    rng.shuffle(clusters)
    rank = {c: r for r, c in enumerate(clusters)}
    return sorted(range(n), key=lambda i: (rank[labels[i]], dist[i], i))


def _path_features(path: str) -> list[str]:
    *dirs, name = path.split("/")
    return ["d:" + "/".join(dirs[: k + 1]) for k in range(len(dirs))] + [
        "w:" + w.lower() for w in _WORD.findall(name)
    ]


def path_order(files: list[SourceFile], rng: random.Random, neighbours: int = 16) -> list[int]:
    n = len(files)
    x = TfidfVectorizer(analyzer=_path_features).fit_transform([f.path for f in files])
    k = min(neighbours, n)
    knn = NearestNeighbors(n_neighbors=k, metric="cosine").fit(x).kneighbors(x, return_distance=False)
    jumps = rng.sample(range(n), n)
    visited = np.zeros(n, dtype=bool)
    order: list[int] = []
    cur = jumps[0]
    while True:
        visited[cur] = True
        order.append(cur)
        if len(order) == n:
            return order
        nxt = next((j for j in knn[cur] if not visited[j]), None)
        if nxt is None:
            while visited[jumps[-1]]:
                jumps.pop()
            nxt = jumps[-1]
        cur = int(nxt)


def order_files(
    files: list[SourceFile], rng: random.Random, probs: dict[str, float], max_clusters: int = 20
) -> tuple[str, list[int]]:
    """(strategy, permutation of range(len(files)))."""
    strategy = draw(probs, rng)
    n = len(files)
    if n < 2:
        return strategy, list(range(n))
    if strategy == "content":
        return strategy, content_order(files, rng, max_clusters)
    if strategy == "path":
        return strategy, path_order(files, rng)
    if strategy == "dependency":
        return strategy, dependency_order(dependencies(files), rng)
    if strategy == "random":
        return strategy, rng.sample(range(n), n)
    raise ValueError(f"unknown ordering strategy {strategy!r}; use {', '.join(STRATEGIES)}")
