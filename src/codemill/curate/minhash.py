"""Shingles and MinHash signatures, vectorised with NumPy.

Shingles are lowercased word-token n-grams (`\\w+`, 5 by default). Each token is hashed once with
xxh3-64 and an n-gram hash is a polynomial combination of its token hashes in uint64 arithmetic, so
the whole file is hashed in a few array operations. The permutations are multiply-shift hashes
(a·x + b mod 2^64, top 32 bits; Dietzfelbinger et al.), computed in chunks so memory stays bounded
for large files. The same n-gram hashes serve decontamination.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

TOKEN = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)
_CHUNK = 4096


class _TokenHashes(dict):
    """token -> xxh3-64, filled on first sight; lookups of known tokens stay in C."""

    def __missing__(self, token: str) -> int:
        if len(self) > 2_000_000:
            self.clear()
        h = self[token] = xxhash.xxh3_64_intdigest(token.encode())
        return h


_token_cache = _TokenHashes()


def token_hashes(text: str, numbers: bool = True) -> np.ndarray:
    tokens = TOKEN.findall(text.lower())
    if not numbers:
        tokens = [t for t in tokens if not t.isdigit()]
    return np.fromiter(map(_token_cache.__getitem__, tokens), dtype=np.uint64, count=len(tokens))


def ngram_hashes(text: str, n: int, numbers: bool = True) -> np.ndarray:
    """Sorted unique hashes of the token n-grams of `text` (empty if it has fewer than n tokens).

    numbers=False leaves out number tokens, so runs of literals like `[1, 2, 3, ...]` in test
    data do not match every other table of small integers."""
    t = token_hashes(text, numbers)
    if len(t) < n:
        return np.empty(0, dtype=np.uint64)
    m = len(t) - n + 1
    h = t[:m].copy()
    for k in range(1, n):
        h = h * _MULT + t[k : k + m]
    return np.unique(h)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a[:, None], b[:, None]


def signature(shingles: np.ndarray, perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """uint32 MinHash signature (num_perm values); all 0xFFFFFFFF for an empty shingle set."""
    a, b = perms
    sig = np.full(a.shape[0], np.iinfo(np.uint64).max, dtype=np.uint64)
    buf = np.empty((a.shape[0], min(_CHUNK, len(shingles))), dtype=np.uint64)
    for start in range(0, len(shingles), _CHUNK):
        x = shingles[start : start + _CHUNK][None, :]
        out = buf[:, : x.shape[1]]
        np.multiply(a, x, out=out)
        out += b
        np.minimum(sig, out.min(axis=1), out=sig)  # min of the top bits = top bits of the min
    return (sig >> np.uint64(32)).astype(np.uint32)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per band: rows·bands of the signature's values combined per band."""
    m = sig[: bands * rows].astype(np.uint64).reshape(bands, rows)
    h = np.zeros(bands, dtype=np.uint64)
    for r in range(rows):
        h = h * _MULT + m[:, r] + np.uint64(r + 1)
    return h


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique hash arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)
