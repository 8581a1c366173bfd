"""Executed FIM benchmarks: how fast the sandbox judges them, and whether SAFIM's ground truths pass.

Speed (default): the canonical programs of all 1,033 HumanEval-infilling single-line tasks and of a
fixed keyed sample of SAFIM block's tasks (the first N by SHA-256 of the task id; all 8,781 take
hours on 2 cores), each run in bubblewrap and without it (the same limits), interleaved per
program so both see the same machine load. Tasks per minute = tasks x 60 / (summed program wall
seconds / workers).

    nice -n 10 python benchmarks/bench_fim_exec.py --workers 2 --safim-sample 120

Ground truth (`--ground-truth block|control`): every task's ground truth filled in and executed on
its unit tests (no exact-match shortcut), per language, with each failure and why; `--per-language N`
takes a keyed sample of N per language (0: all).

    nice -n 10 python benchmarks/bench_fim_exec.py --ground-truth block --langs python,csharp --out gt.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

from codemill.eval import safim, sandbox
from codemill.eval.suites import END, SUITES


def keyed(rows: list[dict], n: int, offset: int = 0) -> list[dict]:
    """n rows (all: n <= 0) from `offset` in SHA-256 order of their task ids: a fixed sample, the same
    on every machine, extended without repeats by a later offset."""
    ordered = sorted(rows, key=lambda r: hashlib.sha256(r["task_id"].encode()).hexdigest())[offset:]
    return ordered if n <= 0 else ordered[:n]


def filled(row: dict) -> str:
    return row["eval_prompt"].replace(safim.FILL, row["ground_truth"])


def speed(workers: int, sample: int) -> None:
    single = SUITES["humaneval-infilling/single-line"].load()
    block = keyed(safim.rows("block"), sample)

    def infilling(task, isolate: bool) -> tuple[bool, float]:
        argv, files = task.program(task.request.reference)
        o = sandbox.run(argv, files, task.limits, unsafe=True, expect=END, isolate=isolate)
        return o.status == "passed", o.seconds

    def block_gt(row, isolate: bool) -> tuple[bool, float]:
        r = safim.execute(row["lang"], filled(row), row["unit_tests"], unsafe=True, isolate=isolate)
        return r["verdict"] == "passed", r["seconds"]

    print(f"load average {os.getloadavg()[0]:.2f}, {workers} workers")
    for name, items, fn in (
        ("humaneval-infilling/single-line", single, infilling),
        (f"safim/block (keyed sample of {len(block)})", block, block_gt),
    ):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            both = list(pool.map(lambda x, fn=fn: (fn(x, True), fn(x, False)), items))
        wall = time.perf_counter() - t0
        per_min = {}
        for i, mode in enumerate(("sandboxed", "unsandboxed")):
            ok = sum(b[i][0] for b in both)
            secs = sum(b[i][1] for b in both)
            per_min[mode] = len(items) * 60 / (secs / workers)
            print(f"{name} {mode}: {len(items)} programs, {ok} passed, {secs:.1f} program-seconds, "
                  f"{per_min[mode]:.0f} tasks/min")  # fmt: skip
        print(f"{name}: sandboxed / unsandboxed time {per_min['unsandboxed'] / per_min['sandboxed']:.2f}x "
              f"(both modes in {wall:.0f} s wall)")  # fmt: skip


def ground_truth(
    kind: str, per_language: int, offset: int, langs: list[str], workers: int, out: str | None
) -> None:
    by_lang = defaultdict(list)
    for r in safim.rows(kind):
        if r["lang"] in langs:
            by_lang[r["lang"]].append(r)
    todo = [r for rows in by_lang.values() for r in keyed(rows, per_language, offset)]
    runnable = [r for r in todo if not safim.missing(r["lang"])]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda r: safim.execute(r["lang"], filled(r), r["unit_tests"]), runnable))
    counts: dict[str, Counter] = defaultdict(Counter)
    failures = []
    for r, res in zip(runnable, results, strict=True):
        counts[r["lang"]][res["safim_result"]] += 1
        if res["verdict"] != "passed":
            failures.append({"task_id": r["task_id"], "lang": r["lang"], **res})
    for lang in sorted(by_lang):
        n, ran = len(by_lang[lang]), sum(r["lang"] == lang for r in runnable)
        picked = sum(r["lang"] == lang for r in todo)
        print(f"{kind} {lang}: {n} tasks, {picked} picked, {ran} run, {dict(counts[lang])}")
    print(
        f"{len(runnable)} programs in {time.perf_counter() - t0:.0f} s; {len(failures)} ground truths failed"
    )
    for f in failures:
        print(f"  {f['task_id']} {f['lang']} {f['safim_result']}: {str(f.get('detail', ''))[:160]!r}")
    if out:
        summary = {"kind": kind, "per_language": per_language, "counts": counts, "failures": failures}
        with open(out, "w") as fh:
            json.dump(summary, fh, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--safim-sample", type=int, default=120, help="SAFIM block tasks timed (keyed)")
    ap.add_argument("--ground-truth", choices=("block", "control"))
    ap.add_argument("--per-language", type=int, default=0, help="keyed sample per language; 0: all")
    ap.add_argument("--offset", type=int, default=0, help="start of the keyed sample per language")
    ap.add_argument("--langs", default="cpp,java,python,csharp", help="SAFIM's names, comma-separated")
    ap.add_argument("--out", help="ground truth: write counts and failures as JSON")
    args = ap.parse_args()
    if args.ground_truth:
        ground_truth(
            args.ground_truth, args.per_language, args.offset, args.langs.split(","), args.workers, args.out
        )
    else:
        speed(args.workers, args.safim_sample)


if __name__ == "__main__":
    main()
