"""Checkpoint checksums: how fast each candidate hashes a file, beside reading it alone.

    python benchmarks/bench_checksum.py [--gib 1]

Writes GIB of random bytes to a temporary file, reads it once to warm the page cache, then reads it
in 16 MiB blocks with no hash, xxh3-128, SHA-256 and BLAKE2b, one core each, and prints GB/s. The
numbers chose xxh3-128 for train/checkpoint.py (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time

import xxhash


class _NoHash:
    def update(self, block: bytes) -> None:
        pass


def rate(path: str, make) -> float:
    h = make()
    t = time.perf_counter()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return os.path.getsize(path) / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile() as f:
        for _ in range(int(args.gib * 64)):
            f.write(os.urandom(1 << 24))
        f.flush()
        rate(f.name, _NoHash)
        for name, make in (("read only", _NoHash), ("xxh3-128", xxhash.xxh3_128), ("SHA-256", hashlib.sha256),
                           ("BLAKE2b", hashlib.blake2b)):  # fmt: skip
            print(f"{name:10} {rate(f.name, make):5.2f} GB/s")


if __name__ == "__main__":
    main()
