"""Curation speed and near-dedup quality, against references measured in the same run.

    python benchmarks/bench_curate.py [--files N] [--e2e [--keep DIR]] [--compare A B]
        [--scale [--sizes 9500,38000,152000] [--rows definitions|module] [--set KEY=VALUE ...]]

1. MinHash signatures (256 permutations, word 5-grams) on the same standard-library files:
   codemill vs datasketch 2.0 (`update_batch`) vs datatrove's `MinhashDedupSignature` (its default
   preprocessing, 256 hashes), one core each. MB/s and the ratio.
2. Near-dedup quality: every pair a loose LSH (64 bands x 4 rows) proposes is scored with exact
   Jaccard; recall of codemill's 21 x 12 banding + verification on pairs with J >= 0.85, and the
   worst best-match of any removed file.
3. --e2e: `codemill curate installed` end to end, MB/s per core overall and per stage; --keep DIR
   keeps the corpus (a new directory). --compare A B: whether two corpora hold the same rows (every
   shard's rows and columns, drops, dedup clusters, repositories), for a change that must not
   change what is kept.
4. --scale: unordered Stack-style tables of real code with planted copies at several sizes: wall
   time, MB/s per core, peak memory of the largest process, planted-copy recall (curate_scale.py).
   --rows module: rows shaped as whole modules (a file's imports and a run of its definitions,
   4 KB) instead of runs of definitions (2.3 KB); --set: curate settings (tasks=8 is the default).
"""

from __future__ import annotations

import argparse
import json
import re
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from codemill.curate import dedup, minhash


def stdlib_files(n: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)[:n]
    return [p.read_text(errors="replace") for p in paths]


def bench_signatures(texts: list[str]) -> dict:
    mb = sum(len(t.encode()) for t in texts) / 1e6
    perms = minhash.permutations(256, 0)
    t = time.perf_counter()
    for text in texts:
        minhash.signature(minhash.ngram_hashes(text, 5), perms)
    ours = mb / (time.perf_counter() - t)

    from datasketch import MinHash

    t = time.perf_counter()
    for text in texts:
        toks = re.findall(r"\w+", text.lower())
        grams = {" ".join(toks[i : i + 5]).encode() for i in range(len(toks) - 4)}
        m = MinHash(num_perm=256)
        m.update_batch(list(grams))
    ds = mb / (time.perf_counter() - t)

    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    with tempfile.TemporaryDirectory() as tmp:
        step = MinhashDedupSignature(
            output_folder=tmp, config=MinhashConfig(num_buckets=16, hashes_per_bucket=16)
        )
        docs = [Document(text=x, id=str(i)) for i, x in enumerate(texts)]
        t = time.perf_counter()
        step.run(iter(docs), rank=0, world_size=1)
        dt = mb / (time.perf_counter() - t)
    return {
        "MB": round(mb, 1),
        "codemill_MBps": round(ours, 2),
        "datasketch_MBps": round(ds, 2),
        "datatrove_MBps": round(dt, 2),
        "vs_datasketch": round(ours / ds, 2),
        "vs_datatrove": round(ours / dt, 2),
    }


def bench_quality(texts: list[str]) -> dict:
    perms = minhash.permutations(256, 0)
    sh = [minhash.ngram_hashes(t, 5) for t in texts]
    sigs = [minhash.signature(s, perms) for s in sh]
    active = np.array([len(s) > 0 for s in sh])
    loose = dedup.candidate_pairs(np.stack([minhash.band_hashes(s, 64, 4) for s in sigs]), active, 10**9)
    truth = {p for p in loose if minhash.jaccard(sh[p[0]], sh[p[1]]) >= 0.85}
    ours = dedup.candidate_pairs(np.stack([minhash.band_hashes(s, 21, 12) for s in sigs]), active, 64)
    found = truth & ours
    removals, _, _ = dedup.near(ours, lambda i: sh[i], np.arange(len(texts)), 0.85)
    worst = min((r.similarity for r in removals), default=1.0)
    return {
        "loose_candidates": len(loose),
        "true_pairs_J>=0.85": len(truth),
        "found": len(found),
        "recall": round(len(found) / max(1, len(truth)), 4),
        "removed": len(removals),
        "min_best_match_of_removed": round(worst, 4),
    }


def bench_e2e(keep: str | None = None) -> dict:
    from codemill.curate.config import CurateConfig
    from codemill.curate.pipeline import curate

    cfg = CurateConfig(tasks=8, workers=2)
    with tempfile.TemporaryDirectory() as tmp:
        m = curate(["installed"], keep or tmp, cfg)
    code_mb = m["stages"]["file_rules"]["bytes_in"] / 1e6
    return {
        "code_MB_read": round(code_mb, 1),
        "seconds": m["seconds"],
        "stage_seconds": m["stage_seconds"],
        "MBps_per_core": round(code_mb / m["seconds"] / cfg.workers, 2),
        "per_stage_MBps_per_core": {
            k: round(code_mb / v / cfg.workers, 2) for k, v in m["stage_seconds"].items()
        },
    }


def compare(a: Path, b: Path) -> bool:
    """Whether corpora a and b hold the same rows; prints each table's row counts and verdict.
    Drops, clusters and repositories are compared as sets of rows (tasks append them in any order)."""
    import pyarrow.parquet as pq

    same = True
    names = sorted(p.name for p in a.glob("files-*.parquet"))
    if names != sorted(p.name for p in b.glob("files-*.parquet")):
        print("shards differ:", names)
        return False
    for name in [*names, "drops.parquet", "dedup_clusters.parquet", "repos.parquet"]:
        ra, rb = (pq.read_table(d / name).to_pylist() for d in (a, b))
        if not name.startswith("files-"):
            ra, rb = sorted(map(repr, ra)), sorted(map(repr, rb))
        ok = ra == rb
        same &= ok
        print(f"{name}: {len(ra)} / {len(rb)} rows, {'same' if ok else 'DIFFERENT'}")
    return same


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--e2e", action="store_true")
    ap.add_argument("--keep", default=None, help="--e2e: keep the corpus in this new directory")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two corpora")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--sizes", default="9500,38000,152000")
    ap.add_argument("--rows", choices=("definitions", "module"), default="definitions")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a curate setting")
    args = ap.parse_args()
    if args.compare:
        raise SystemExit(0 if compare(*args.compare) else 1)
    if args.scale:
        from curate_scale import bench_scale

        sets = dict(kv.split("=", 1) for kv in args.set)
        bench_scale(
            [int(n) for n in args.sizes.split(",")], args.rows, {k: json.loads(v) for k, v in sets.items()}
        )
        raise SystemExit
    texts = stdlib_files(args.files)
    print("signatures:", json.dumps(bench_signatures(texts)))
    print("quality:", json.dumps(bench_quality(texts)))
    if args.e2e:
        print("end to end:", json.dumps(bench_e2e(args.keep)))
