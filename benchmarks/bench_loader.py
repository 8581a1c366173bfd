"""Tokens/s of the training stream, of the trainer's DataLoader, and of `codemill train`, here and
(`--against`) in another checkout of codemill, alternated ABAB so a machine loaded by other work
weighs on both alike. Wall and CPU seconds (this process and its children, `resource.getrusage`)
are reported beside tokens/s; medians over `--runs`.

    python benchmarks/bench_loader.py                                   # stream, loader by workers
    git worktree add /tmp/before HEAD~3
    python benchmarks/bench_loader.py --against /tmp/before --runs 3    # + before/after, ABAB

Needs a curated corpus and a tokenizer (default: the demo's, `make demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def cpu_s() -> float:
    """CPU seconds of this process and its waited-for children, user + system."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def stream_rate(corpus: Path, tokenizer: Path, seq_len: int, shards: int, windows: int) -> dict:
    """`windows` windows from each of `shards` streams (the demo's: 8 shards of 512), in-process."""
    from codemill.data.config import DataConfig
    from codemill.data.stream import TrainingStream
    from codemill.data.tokenizer import load_tokenizer

    tok, cfg = load_tokenizer(tokenizer), DataConfig(seq_len=seq_len)
    streams = [TrainingStream(corpus, tok, cfg, rank=s, world=shards) for s in range(shards)]
    t0, c0 = time.perf_counter(), cpu_s()
    tokens = sum(len(next(st)["tokens"]) for _ in range(windows) for st in streams)
    return {"tokens": tokens, "wall_s": time.perf_counter() - t0, "cpu_s": cpu_s() - c0}


def loader_rate(corpus: Path, tokenizer: Path, seq_len: int, shards: int, steps: int, workers: int) -> dict:
    """`steps` steps of one window per shard through the trainer's loader, from its creation (the
    workers' start is part of what a run pays)."""
    from codemill.data.config import DataConfig
    from codemill.data.loader import WindowLoader
    from codemill.data.tokenizer import load_tokenizer

    tok, cfg = load_tokenizer(tokenizer), DataConfig(seq_len=seq_len)
    t0, c0 = time.perf_counter(), cpu_s()
    loader = WindowLoader(corpus, tok, cfg, list(range(shards)), shards, 1, workers)
    tokens = sum(loader.next_step()[0].numel() for _ in range(steps))
    loader.close()
    return {"tokens": tokens, "wall_s": time.perf_counter() - t0, "cpu_s": cpu_s() - c0}


def child(src: Path, what: list[str]) -> dict:
    """One measurement in a fresh interpreter importing codemill from `src`."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *what], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1])


def train_rate(src: Path, corpus: Path, tokenizer: Path, recipe: Path, steps: int, sets: list[str]) -> dict:
    """`codemill train` of `recipe` (the demo) for `steps` steps: the median tokens/s of its records
    after the first, and the run's wall and CPU seconds (startup and export included)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "codemill.cli", "train", "--corpus", str(corpus), "--tokenizer",
               str(tokenizer), "--recipe", str(recipe), "--out", f"{tmp}/run", "--set", f"max_steps={steps}",
               "--set", "log_every=2", "--set", f"ckpt_every={steps}"]  # fmt: skip
        for s in sets:
            cmd += ["--set", s]
        env = {**os.environ, "PYTHONPATH": str(src)}
        t0, c0 = time.perf_counter(), cpu_s()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        if r.returncode:
            raise SystemExit(r.stdout[-3000:] + r.stderr[-3000:])
        rows = [json.loads(x) for x in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    rates = [x["tokens_per_s_per_device"] for x in rows[1:]]
    return {"tokens_per_s": statistics.median(rates), "wall_s": wall, "cpu_s": cpu,
            "losses": [x["loss"] for x in rows], "data_s": sum(x.get("data_s", 0.0) for x in rows)}  # fmt: skip


def summary(name: str, runs: list[dict]) -> str:
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "cpu_s")}
    if "tokens_per_s" in runs[0]:
        rate = statistics.median(r["tokens_per_s"] for r in runs)
        data = statistics.median(r["data_s"] for r in runs)
        more = f"data wait {data:6.1f} s"
    else:
        rate = statistics.median(r["tokens"] / r["wall_s"] for r in runs)
        more = f"{statistics.median(r['tokens'] / r['cpu_s'] for r in runs):9,.0f} tokens/CPU-s"
    return (
        f"{name:<34} {rate:9,.0f} tokens/s   wall {med['wall_s']:6.1f} s   CPU {med['cpu_s']:6.1f} s   {more}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=HERE / "runs/demo/corpus")
    ap.add_argument("--tokenizer", type=Path, default=HERE / "runs/demo/tokenizer")
    ap.add_argument("--recipe", type=Path, default=HERE / "recipes/demo.yaml")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--windows", type=int, default=40, help="windows per shard (stream, loader)")
    ap.add_argument("--workers", default="0,1,2", help="loader workers to compare")
    ap.add_argument("--train-workers", default="0,1,2", help="loader workers of the train runs (--against)")
    ap.add_argument("--steps", type=int, default=30, help="training steps (--against)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", type=Path, default=None, help="another codemill checkout (the before)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one measurement, JSON on stdout
        what, *rest = args.child
        common = (args.corpus, args.tokenizer, args.seq_len, args.shards)
        got = (
            stream_rate(*common, args.windows)
            if what == "stream"
            else loader_rate(*common, args.windows, int(rest[0]))
        )
        print(json.dumps(got))
        return
    here = HERE / "src"
    common = ["--corpus", str(args.corpus), "--tokenizer", str(args.tokenizer), "--seq-len", str(args.seq_len),
              "--shards", str(args.shards), "--windows", str(args.windows)]  # fmt: skip
    cases: dict[str, Callable[[], dict]] = {}
    if args.against:
        cases["stream, before"] = lambda: child(args.against / "src", ["stream", *common])
    cases["stream, after"] = lambda: child(here, ["stream", *common])
    for w in map(int, args.workers.split(",")):
        cases[f"loader, {w} workers"] = lambda w=w: child(here, ["loader", str(w), *common])
    if args.against:
        train = (args.corpus, args.tokenizer, args.recipe, args.steps)
        cases["codemill train, before"] = lambda: train_rate(args.against / "src", *train, [])
        for w in map(int, args.train_workers.split(",")):
            cases[f"codemill train, after, {w} workers"] = lambda w=w: train_rate(
                here, *train, [f"loader_workers={w}"]
            )
    results: dict[str, list[dict]] = {k: [] for k in cases}
    for r in range(args.runs):  # ABAB: every case once per round
        for name, run in cases.items():
            results[name].append(run())
            print(f"round {r + 1}: {summary(name, results[name][-1:])}", flush=True)
    print(f"\nmedians of {args.runs} rounds (load average at the end: {os.getloadavg()[0]:.2f})")
    for name, runs in results.items():
        print(summary(name, runs))
    trains = {k: v[0]["losses"] for k, v in results.items() if k.startswith("codemill train")}
    if trains:
        same = len({json.dumps(v) for v in trains.values()}) == 1
        print(
            f"loss curves of every train case {'identical' if same else 'DIFFER'}: {next(iter(trains.values()))[:3]}..."
        )


if __name__ == "__main__":
    main()
