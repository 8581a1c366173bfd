"""Algorithm 1 of the paper: the order in which a repository's files enter the training stream.

One strategy per repository, drawn with the recipe's probabilities (paper: content 30, path 30,
dependency 30, random 10). The paper's strategies, as Algorithm 1 prints them:
- content: TF-IDF + KMeans with k = min(random(1, 20), files); the clusters shuffled, then each
  cluster's files shuffled (`orderedFiles.extend(SHUFFLE(Cluster))`);
- path: repeat K = random(1, |Files|), randomFile = random(Files); append randomFile's K path-nearest
  files (removed from Files), then randomFile, so a file follows the files whose paths resemble it;
- dependency: from a leaf of the import graph up its chain of importers, a file joining the leaves
  once what it imports is placed (deps.dependency_walk; the readings it takes are written there).
What the paper leaves open: TF-IDF over identifiers; path similarity = cosine of TF-IDF over
directory prefixes and file-name words; the K neighbours nearest first; K capped by the files left.

Named variants of ours, measured against the paper's: `content_central` (a cluster's files from
the most central outwards), `path_walk` (a nearest-neighbour walk from file to file) and
`dependency_kahn` (every import before its importer, where the printed walk may place an importer
before some of what it imports).
"""

from __future__ import annotations

import random
import re

import numpy as np

from codemill.data.deps import dependencies, dependency_kahn, dependency_walk
from codemill.data.repo import SourceFile
from codemill.errors import UserError

STRATEGIES = ("content", "path", "dependency", "random", "content_central", "path_walk", "dependency_kahn")
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


def _clusters(files: list[SourceFile], rng: random.Random, max_clusters: int):
    """KMeans labels and distances to the centre, or None when no file has an identifier."""
    from sklearn.cluster import KMeans  # here: importing sklearn costs 1.4 CPU s in every process
    from sklearn.feature_extraction.text import TfidfVectorizer

    n = len(files)
    try:
        x = TfidfVectorizer(token_pattern=IDENTIFIER, lowercase=False, sublinear_tf=True, dtype=np.float32)
        x = x.fit_transform([f.text for f in files])
    except ValueError:
        return None
    k = min(rng.randint(1, max_clusters), n)
    km = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=rng.randrange(2**31))
    labels = km.fit_predict(x)
    return labels, km.transform(x)[np.arange(n), labels]


def content_order(files: list[SourceFile], rng: random.Random, max_clusters: int) -> list[int]:
    """The paper's: clusters shuffled, each cluster's files shuffled."""
    found = _clusters(files, rng, max_clusters)
    if found is None:  # no identifiers at all: one cluster
        return rng.sample(range(len(files)), len(files))
    labels = found[0].tolist()
    clusters = sorted(set(labels))
    rng.shuffle(clusters)
    order: list[int] = []
    for c in clusters:
        members = [i for i, label in enumerate(labels) if label == c]
        rng.shuffle(members)
        order += members
    return order


def content_central_order(files: list[SourceFile], rng: random.Random, max_clusters: int) -> list[int]:
    """Ours: clusters shuffled, each cluster's files from the most central outwards."""
    found = _clusters(files, rng, max_clusters)
    if found is None:
        return rng.sample(range(len(files)), len(files))
    labels, dist = found
    clusters = sorted(set(labels.tolist()))
    rng.shuffle(clusters)
    rank = {c: r for r, c in enumerate(clusters)}
    return sorted(range(len(files)), key=lambda i: (rank[labels[i]], dist[i], i))


def _path_features(path: str) -> list[str]:
    *dirs, name = path.split("/")
    return ["d:" + "/".join(dirs[: k + 1]) for k in range(len(dirs))] + [
        "w:" + w.lower() for w in _WORD.findall(name)
    ]


def _path_vectors(files: list[SourceFile]):
    """Rows of unit length, so a dot product is the cosine similarity of two paths."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer=_path_features).fit_transform([f.path for f in files])


def path_groups(files: list[SourceFile], rng: random.Random) -> list[tuple[list[int], int]]:
    """Algorithm 1's path loop: (the K path-nearest remaining files, the random anchor) per round."""
    x = _path_vectors(files)
    left = list(range(len(files)))
    groups = []
    while left:
        k = min(rng.randint(1, len(left)), len(left) - 1)
        anchor = rng.choice(left)
        others = [i for i in left if i != anchor]
        sim = (x[others] @ x[anchor].T).toarray().ravel() if others else np.empty(0)
        near = [others[j] for j in sorted(range(len(others)), key=lambda j: (-sim[j], others[j]))[:k]]
        groups.append((near, anchor))
        taken = {anchor, *near}
        left = [i for i in left if i not in taken]
    return groups


def path_order(files: list[SourceFile], rng: random.Random) -> list[int]:
    """The paper's: each round appends the anchor's K nearest files, then the anchor."""
    return [i for near, anchor in path_groups(files, rng) for i in [*near, anchor]]


def path_walk_order(files: list[SourceFile], rng: random.Random, neighbours: int = 16) -> list[int]:
    """Ours: from a random file to its nearest unvisited neighbour, jumping when none is left."""
    from sklearn.neighbors import NearestNeighbors

    n = len(files)
    x = _path_vectors(files)
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
    if strategy == "content_central":
        return strategy, content_central_order(files, rng, max_clusters)
    if strategy == "path":
        return strategy, path_order(files, rng)
    if strategy == "path_walk":
        return strategy, path_walk_order(files, rng)
    if strategy == "dependency":
        return strategy, dependency_walk(dependencies(files), rng)
    if strategy == "dependency_kahn":
        return strategy, dependency_kahn(dependencies(files), rng)
    if strategy == "random":
        return strategy, rng.sample(range(n), n)
    raise UserError(f"unknown ordering strategy {strategy!r}; use {', '.join(STRATEGIES)}")
