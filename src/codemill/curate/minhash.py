"""Shingles and MinHash signatures, vectorised with NumPy.

Shingles are lowercased word-token n-grams (5 by default). Tokens are found and hashed with array
operations over the text's bytes (no Python work per token), and an n-gram hash is a polynomial
combination of its token hashes in uint64 arithmetic, so the whole file is hashed in a few array
operations. The permutations are multiply-shift hashes
(a·x + b mod 2^64, top 32 bits; Dietzfelbinger et al.), computed in blocks that fit a core's L2
cache, so memory stays bounded for large files. The same n-gram hashes serve decontamination.
"""

from __future__ import annotations

from functools import cache

import numpy as np

_MULT = np.uint64(0x9E3779B97F4A7C15)
_CHUNK, _ROWS = 16384, 8  # signatures' working array: 8 permutations x 16384 shingles
_P = 0x100000001B3  # odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
# word bytes: ASCII letters, digits and "_", and every byte of a non-ASCII character
_WORD = np.array([chr(b).isalnum() or b == ord("_") or b >= 0x80 for b in range(256)])
_DIGIT = (np.arange(256) >= ord("0")) & (np.arange(256) <= ord("9"))
# each byte's class for `bytes.translate` (one pass at C speed): 0 separator, 1 digit, 2 other word byte
_CLASSES = (_WORD * (2 - _DIGIT)).astype(np.uint8).tobytes()
KEPT_POWERS = 1 << 18  # texts hashed at once up to this many bytes use tables made once (4 MB)


@cache
def _kept_power_tables() -> tuple[np.ndarray, np.ndarray]:
    return _powers(_P, KEPT_POWERS), _powers(_P_INV, KEPT_POWERS)


def _powers(base: int, n: int) -> np.ndarray:
    """base^i mod 2^64 for i < n."""
    return np.cumprod(np.r_[np.uint64(1), np.full(n - 1, base, np.uint64)])


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i mod 2^64 for i < n (at least). Tables for longer texts are made for the call
    and dropped: kept tables that grew to the largest file met made a worker's memory grow with the
    input (+45 MB at once on the scale benchmark). They are the kept tables times P^(±KEPT_POWERS·j),
    one multiply per power: a `cumprod` (serial) was a tenth of the tokenizing of the stdlib's files."""
    kept = _kept_power_tables()
    if n <= KEPT_POWERS:
        return kept
    blocks = -(-n // KEPT_POWERS)
    return tuple(
        (t * _powers(pow(p, KEPT_POWERS, 1 << 64), blocks)[:, None]).ravel()
        for t, p in zip(kept, (_P, _P_INV), strict=True)
    )


def batch_tokens(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tokens of many texts in one pass (per-call NumPy overhead dominates on small files):
    hashes, the words mask, and bounds (text k's tokens are [bounds[k], bounds[k+1])).

    A token is a run of ASCII letters, digits, "_" and non-ASCII characters (`\\w+` on ASCII text);
    a word holds a byte that is not a digit. Its hash is a polynomial over its UTF-8 bytes (prefix
    sums times inverse powers, exact in uint64 arithmetic, so independent of where the token sits)
    put through splitmix64's finalizer. One pass serves the MinHash shingles (every token) and
    decontamination (words only)."""
    parts = [t.lower().encode("utf-8", "surrogatepass") for t in texts]
    padded = b"\n".join([b"", *parts, b""])  # "\n" is not a word byte: no token spans two texts
    c = np.frombuffer(padded.translate(_CLASSES), np.uint8)
    b = np.frombuffer(padded, np.uint8)[1:-1]
    # arrays over every byte are few and cheap (a table lookup by `np.take` cost twice `translate`)
    w = c != 0
    edges = np.flatnonzero(w[1:] != w[:-1])
    starts, ends = edges[::2], edges[1::2]
    # a token that is not a word is a run of digits that begins and ends where a token does; such
    # runs are few, so they are matched to tokens, not the tokens to them (a `logical_or.reduceat`
    # over every token for this mask was a quarter of the pass)
    d = c == 1
    runs = np.flatnonzero(d[1:] != d[:-1])
    k = np.minimum(np.searchsorted(starts, runs[::2]), len(starts) - 1)
    words = np.ones(len(starts), bool)
    words[k[(starts[k] == runs[::2]) & (ends[k] == runs[1::2])]] = False
    pw, inv = _power_tables(len(b) + 1)
    prefix = np.empty(len(b) + 1, np.uint64)
    prefix[0] = 0
    np.multiply(b, pw[: len(b)], out=prefix[1:])
    np.cumsum(prefix[1:], out=prefix[1:])
    h = (prefix[ends] - prefix[starts]) * inv[starts] + (ends - starts).astype(np.uint64)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    text_starts = np.cumsum([0] + [len(p) + 1 for p in parts])
    return h ^ (h >> np.uint64(31)), words, np.searchsorted(starts, text_starts)


def batch_ngrams(t: np.ndarray, bounds: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n-grams inside each of many token sequences (t[bounds[k]:bounds[k+1]]), none spanning
    two, unsorted, and their bounds."""
    counts = np.maximum(np.diff(bounds) - n + 1, 0)
    m = len(t) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64), np.zeros(len(bounds), np.int64)
    h = t[:m].copy()
    for k in range(1, n):
        np.multiply(h, _MULT, out=h)
        h += t[k : k + m]
    seq = np.repeat(np.arange(len(counts)), np.diff(bounds))[:m]  # the sequence each window starts in
    inside = np.arange(n, m + n) <= bounds[1:][seq]
    return h[inside], np.r_[0, np.cumsum(counts)]


def spans(lengths: list[int], limit: int = KEPT_POWERS - 4096) -> list[tuple[int, int]]:
    """Consecutive index ranges whose texts total at most `limit` characters (a longer text alone):
    the groups to hash at once, so the arrays stay small."""
    out, lo, size = [], 0, 0
    for i, n in enumerate(lengths):
        if i > lo and size + n > limit:
            out.append((lo, i))
            lo, size = i, 0
        size += n
    return [*out, (lo, len(lengths))] if lengths else out


def shingle_sets(texts: list[str], n: int) -> list[np.ndarray]:
    """Each text's sorted unique n-gram hashes (exact Jaccard's input), a group of texts at a time:
    one tokenization and one sort per group."""
    out = []
    for lo, hi in spans([len(t) for t in texts]):
        h, _, bounds = batch_tokens(texts[lo:hi])
        grams, gb = batch_ngrams(h, bounds, n)
        owner = np.repeat(np.arange(hi - lo), np.diff(gb))
        order = np.lexsort((grams, owner))
        g, o = grams[order], owner[order]
        first = np.r_[True, (g[1:] != g[:-1]) | (o[1:] != o[:-1])]
        g, o = g[first], o[first]
        cuts = np.searchsorted(o, np.arange(hi - lo + 1))
        out += [g[cuts[k] : cuts[k + 1]] for k in range(hi - lo)]
    return out


def ngram_hashes(text: str, n: int, numbers: bool = True, unique: bool = True) -> np.ndarray:
    """The token n-grams of one text, sorted and unique (unique=False: unsorted, with repeats, all
    a MinHash signature needs). numbers=False leaves out number tokens, so runs of literals like
    `[1, 2, 3, ...]` in test data do not match every other table of small integers."""
    h, words, _ = batch_tokens([text])
    t = h if numbers else h[words]
    grams, _ = batch_ngrams(t, np.array([0, len(t)]), n)
    return np.unique(grams) if unique else grams


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a[:, None], b[:, None]


def signature(shingles: np.ndarray, perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """uint32 MinHash signature (num_perm values); all 0xFFFFFFFF for an empty shingle set."""
    return signatures(shingles, np.array([0, len(shingles)]), perms)[0]


def signatures(shingles: np.ndarray, bounds: np.ndarray, perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The signatures of many shingle sets at once (set k is shingles[bounds[k]:bounds[k+1]]), as
    a (sets, num_perm) uint32 array: a chunk of columns spans many small sets, and each set's
    minimum is a `minimum.reduceat` over its columns.

    The permutations are applied _ROWS at a time to a chunk of _CHUNK columns, so the array that
    the multiply, the add and the minimum pass over (1 MB) stays in the core's L2 cache: all 256
    rows of a 4096-column chunk at once (8 MB) took 2.4x the CPU on the standard library's files."""
    a, b = perms
    filled = np.flatnonzero(bounds[1:] > bounds[:-1])  # an empty set's signature stays all ones
    cuts = bounds[filled]  # where each non-empty set's columns begin
    mins = np.full((a.shape[0], len(filled)), np.iinfo(np.uint64).max, dtype=np.uint64)
    n = int(bounds[-1])
    buf = np.empty((_ROWS, min(_CHUNK, n)), dtype=np.uint64)
    starts = np.arange(0, n, _CHUNK)
    # per chunk, the sets with columns in it: [first, last), the first perhaps begun in a chunk before
    firsts = np.searchsorted(cuts, starts, "right") - 1
    lasts = np.searchsorted(cuts, starts + _CHUNK, "left")
    for start, first, last in zip(starts.tolist(), firsts.tolist(), lasts.tolist(), strict=True):
        x = shingles[start : min(start + _CHUNK, n)]
        cols = np.maximum(cuts[first:last], start) - start
        out = buf[:, : len(x)]
        chunk = np.empty((a.shape[0], last - first), dtype=np.uint64)
        for r in range(0, a.shape[0], _ROWS):
            rows = out[: min(_ROWS, a.shape[0] - r)]
            np.multiply(a[r : r + _ROWS], x, out=rows)
            np.add(rows, b[r : r + _ROWS], out=rows)
            np.minimum.reduceat(rows, cols, axis=1, out=chunk[r : r + _ROWS])
        np.minimum(mins[:, first:last], chunk, out=mins[:, first:last])
    sig = np.full((len(bounds) - 1, a.shape[0]), np.iinfo(np.uint32).max, dtype=np.uint32)
    sig[filled] = (mins >> np.uint64(32)).T
    return sig


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per band (per signature, for a 2-d array of them): the band's rows of the
    signature combined as h = (...((v0 + 1)·M + v1 + 2)·M ...) + v_{rows-1} + rows, mod 2^64."""
    m = sig[..., : bands * rows].astype(np.uint64).reshape(*sig.shape[:-1], bands, rows)
    powers = np.cumprod(np.r_[np.uint64(1), np.full(rows - 1, _MULT)])[::-1]  # M^(rows-1-r)
    return ((m + np.arange(1, rows + 1, dtype=np.uint64)) * powers).sum(axis=-1, dtype=np.uint64)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique hash arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)
