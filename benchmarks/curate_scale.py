"""`bench_curate.py --scale`: codemill curate on unordered Stack-style tables of real code, at
several sizes, with planted exact and near copies in other repositories.

Snippets are cut from the code installed on this machine (standard library, site-packages, system
headers) at blank lines before top-level lines, at least 20 lines (2.0 KB on average), grouped into repositories of 10 to 60 snippets, and
the rows shuffled as a real dump's are. `rows="module"` makes rows shaped as Stack files instead
(`modules`: a file's imports and a run of its whole definitions, 4.4 KB on average). 2% of snippets get an exact copy in another repository and
2% a near copy (a few lines edited, exact Jaccard of the 5-gram sets >= 0.9, checked here). Recall
is the share of plants where the copy or its original was removed by exact or near dedup.

Per-task working sets are set small (`bucket_mb` 2, `buffer_mb` 4, `part_files` 10,000), as a
cluster run sets them against its own input, so task counts grow with the input and memory must not.
Each size runs `codemill curate` in a fresh process; the peak resident memory of the largest
process (the driver or any worker) is sampled every 50 ms in a wrapper.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codemill.curate import minhash
from codemill.curate.config import CurateConfig
from codemill.curate.filters import check_file
from codemill.langs import Lang, detect

ROOTS = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], "/usr/include")
SNIPPET_LINES = 20
TOP_LEVEL_NOT = ("", " ", "\t", "\n", "}", ")", "]")  # a line starting so continues the one above
# Workers are forked by multiprocess's fork server, not by the driver, so getrusage cannot see
# them: a thread samples the resident memory of every descendant every 50 ms.
RUNNER = """
import json, sys, threading, psutil
import codemill.curate.pipeline as pipeline
from codemill.curate.config import CurateConfig
me, done, stage = psutil.Process(), threading.Event(), ["setup"]
peak, driver, cpu = {}, {}, {}  # worker and driver peaks by stage; CPU seconds by (pid, stage)
make_executor, finalize = pipeline.make_executor, pipeline._finalize
def named(kind, steps, tasks, workers, logs):  # which stage is running, for the peaks by stage
    stage[0] = logs.name
    return make_executor(kind, steps, tasks, workers, logs)
def finalizing(*args):
    stage[0] = "finalize"
    return finalize(*args)
pipeline.make_executor, pipeline._finalize = named, finalizing
def sample():
    while not done.wait(0.05):
        s = stage[0]
        driver[s] = max(driver.get(s, 0), me.memory_info().rss / 2**20)
        peak.setdefault(s, 0)
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                cpu[p.pid, s] = t.user + t.system - sum(v for (q, r), v in cpu.items() if q == p.pid and r != s)
                if p is not me:
                    peak[s] = max(peak[s], p.memory_info().rss / 2**20)
            except psutil.Error:
                pass
threading.Thread(target=sample, daemon=True).start()
cfg = CurateConfig(**json.loads(sys.argv[3]))
m = pipeline.curate([sys.argv[1]], sys.argv[2], cfg, quiet=True)
done.set()
cpu_s = {}
for (_, s), v in cpu.items():
    cpu_s[s] = cpu_s.get(s, 0) + v
print(json.dumps({"stage_seconds": m["stage_seconds"], "worker_peak_mb": peak, "driver_peak_mb": driver, "cpu_s": cpu_s}))
"""


def snippets(limit: int) -> list[tuple[str, str, str]]:
    """(source file, snippet path, text) of real code, cut at a blank line before a top-level line
    once a snippet has 20 lines, so a snippet is a run of whole top-level definitions as a file is;
    only snippets that pass the file rules, so every plant reaches dedup."""
    cfg = CurateConfig()
    out = []
    for path, lang, lines in _code_files():
        start = 0
        for i, line in enumerate(lines):
            top_level = i + 1 < len(lines) and lines[i + 1][:1] not in TOP_LEVEL_NOT
            if (i - start >= SNIPPET_LINES and not line.strip() and top_level) or i == len(lines) - 1:
                text = "".join(lines[start : i + 1])
                name = f"{path.stem}_{start}{path.suffix}"
                if detect(name) == lang and check_file(name, lang.name, text.encode(), cfg)[0] is not None:
                    out.append((str(path), name, text))
                start = i + 1
        if len(out) >= limit:
            return out[:limit]
    return out


def _code_files() -> Iterator[tuple[Path, Lang, list[str]]]:
    """The installed code files, in path order, with their language and lines."""
    for root in ROOTS:
        for path in sorted(Path(root).rglob("*")):
            lang = detect(str(path))
            if lang is None or lang.kind != "code" or not path.is_file() or path.is_symlink():
                continue
            try:
                yield path, lang, path.read_text().splitlines(keepends=True)
            except (OSError, UnicodeDecodeError):
                continue


MODULE_BYTES = 2_500  # a module row ends at the first top-level boundary past this: 4.0 KB on average
IMPORT = re.compile(
    rb"(import\s|from\s+\S+\s+import\s|#\s*include\s|using\s|package\s|use\s|require\b|"
    rb"(const|let|var)\s+\S+\s*=\s*require\()"
)


def modules(limit: int) -> list[tuple[str, str, str]]:
    """(source file, row path, text) of module-like rows: a real file's top-level import lines, then
    a run of its whole top-level definitions up to about 4 KB, cut as `snippets` cuts (a Stack row
    is a whole module: every row of one file repeats its imports); only rows that pass the file
    rules."""
    cfg = CurateConfig()
    out = []
    for path, lang, lines in _code_files():
        head, body = _imports(lines)
        start, size = 0, len(head)
        for i, line in enumerate(body):
            size += len(line)
            top_level = i + 1 < len(body) and body[i + 1][:1] not in TOP_LEVEL_NOT
            if (size >= MODULE_BYTES and not line.strip() and top_level) or i == len(body) - 1:
                text = head + ("\n" if head else "") + "".join(body[start : i + 1]).lstrip("\n")
                name = f"{path.stem}_{start}{path.suffix}"
                if detect(name) == lang and check_file(name, lang.name, text.encode(), cfg)[0] is not None:
                    out.append((str(path), name, text))
                start, size = i + 1, len(head)
        if len(out) >= limit:
            return out[:limit]
    return out


def _imports(lines: list[str]) -> tuple[str, list[str]]:
    """A file's top-level import statements (with their continuation lines: an open bracket or a
    trailing backslash), and the other lines."""
    head, body, depth, going = [], [], 0, False
    for line in lines:
        if not going and (line[:1] in TOP_LEVEL_NOT or IMPORT.match(line.encode()) is None):
            body.append(line)
            continue
        head.append(line)
        code = line.split("#", 1)[0] if not line.startswith("#") else ""
        depth += sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")
        going = depth > 0 or line.rstrip().endswith("\\")
    return "".join(head), body


def _edit(text: str, rng: random.Random) -> str | None:
    lines = text.splitlines(keepends=True)
    for k in rng.sample(range(len(lines)), max(1, len(lines) // 15)):
        lines[k] = lines[k].rstrip("\n") + "  # edited\n"
    new = "".join(lines)
    a, b = minhash.ngram_hashes(text, 5), minhash.ngram_hashes(new, 5)
    return new if minhash.jaccard(a, b) >= 0.9 else None


def build_table(base: list[tuple[str, str, str]], out: Path, seed: int = 0) -> dict:
    """An unordered table of len(base) snippets plus planted copies; returns the plants."""
    rng = random.Random(seed)
    rows, repo, i = [], 0, 0
    while i < len(base):
        size = rng.randint(10, 60)
        for _, name, text in base[i : i + size]:
            rows.append({"repo": f"org{repo % 97}/repo{repo}", "path": f"{repo}/{name}", "content": text})
        i, repo = i + size, repo + 1
    plants = {"exact": [], "near": []}
    for k in rng.sample(range(len(rows)), len(rows) // 25):
        r = rows[k]
        kind = "exact" if len(plants["exact"]) <= len(plants["near"]) else "near"
        text = r["content"] if kind == "exact" else _edit(r["content"], rng)
        if text is None:
            continue
        other = f"mirror{rng.randrange(10**6)}/copy"
        copy = {"repo": other, "path": f"vendor/{len(plants[kind])}/{r['path']}", "content": text}
        rows.append(copy)
        plants[kind].append([[r["repo"], r["path"]], [copy["repo"], copy["path"]]])
    rng.shuffle(rows)
    for r in rows:
        r.update(license="MIT", stars=rng.randint(0, 500))
    pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=10_000, compression="zstd")
    return plants


def run_size(n: int, base: list, tmp: Path, cfg: dict) -> dict:
    table = tmp / f"stack-{n}.parquet"
    plants = build_table(base[:n], table)
    out = tmp / f"corpus-{n}"
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(table), str(out), json.dumps(cfg)],
        capture_output=True,
        text=True,
        env={**os.environ, "RAYON_NUM_THREADS": "1"},
    )
    wall = time.time() - t0
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    dedup = pq.read_table(out / "drops.parquet", filters=[("stage", "in", ["exact_dedup", "near_dedup"])])
    removed = set(zip(dedup.column("repo").to_pylist(), dedup.column("path").to_pylist(), strict=True))
    recall = {
        kind: sum(tuple(a) in removed or tuple(b) in removed for a, b in pairs) / max(1, len(pairs))
        for kind, pairs in plants.items()
    }
    kept = hashlib.sha256()
    for shard in sorted(out.glob("files-*.parquet")):
        t = pq.read_table(shard, columns=["repo", "path"])
        kept.update("\n".join(sorted(map("/".join, zip(*t.to_pydict().values(), strict=True)))).encode())
    rows = pq.ParquetFile(table).metadata.num_rows
    mb = manifest["stages"]["read"]["bytes_in"] / 1e6
    return {
        "files": rows,
        "MB": round(mb, 1),
        "wall_s": round(wall, 1),
        "MBps_per_core": round(mb / wall / cfg["workers"], 2),
        "stage_seconds": res["stage_seconds"],
        "cpu_s": round(sum(res["cpu_s"].values()), 1),
        "cpu_s_by_stage": {k: round(v, 1) for k, v in res["cpu_s"].items()},
        "driver_rss_mb": round(max(res["driver_peak_mb"].values())),
        "driver_rss_mb_by_stage": {k: round(v) for k, v in res["driver_peak_mb"].items()},
        "largest_worker_rss_mb": round(max(res["worker_peak_mb"].values())),
        "worker_rss_mb_by_stage": {k: round(v) for k, v in res["worker_peak_mb"].items()},
        "plants": {k: len(v) for k, v in plants.items()},
        "recall": {k: round(v, 4) for k, v in recall.items()},
        "kept": manifest["files"]["out"],
        "kept_sha256": kept.hexdigest()[:16],  # the kept files' names: equal runs keep the same files
    }


def bench_scale(sizes: list[int], rows: str = "definitions", overrides: dict | None = None) -> list[dict]:
    """rows: "definitions" (snippets) or "module" (modules); overrides: CurateConfig fields."""
    base = (modules if rows == "module" else snippets)(max(sizes))
    if len(base) < max(sizes):
        raise RuntimeError(f"only {len(base)} rows of installed code; lower --sizes")
    # the per-task working sets scaled down with the inputs (defaults: 64 MB, 128 MB, 1M files), so
    # that the largest size has many buckets and dedup parts and the bound is exercised
    cfg = {"tasks": 8, "workers": 2, "drop_lowest_fraction": 0.0}
    cfg |= {"bucket_mb": 2, "buffer_mb": 4, "part_files": 10_000} | (overrides or {})
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            results.append(run_size(n, base, Path(tmp), cfg))
            print("scale:", json.dumps(results[-1]), flush=True)
    small, large = results[0], results[-1]
    peak = [max(r["driver_rss_mb"], r["largest_worker_rss_mb"]) for r in (small, large)]
    print(f"largest process: {peak[0]} MB at {small['files']:,} files -> {peak[1]} MB at {large['files']:,} "
          f"files ({100 * (peak[1] / peak[0] - 1):+.1f}%; the bound is +25%)")  # fmt: skip
    return results
