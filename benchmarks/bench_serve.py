"""Completion latency of codemill's engine against transformers' generate() on the same model.

Same checkpoint, same prompt (a real file split at a line), 64 new tokens, greedy, CPU, in one run:
- transformers `generate()` (its own KV cache within the call, nothing kept between calls);
- codemill cold (empty cache), warm (the same request again), and typing (the prompt grown by the
  characters a user types, one request per keystroke, as an editor sends them).

    python benchmarks/bench_serve.py --model runs/demo/train/final
"""

from __future__ import annotations

import argparse
import statistics
import sysconfig
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM

from codemill.serve.engine import Engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("runs/demo/train/final"))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    cut = text.index("\n", len(text) // 3) + 1
    prefix, suffix = text[:cut] + "    ", text[cut:]
    engine = Engine(args.model)
    hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    ids = engine.prompt(prefix, suffix, path="textwrap.py", max_tokens=args.tokens)
    stops = sorted(engine.stop_ids)

    def hf_run() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            hf.generate(torch.tensor([ids]), max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                        pad_token_id=stops[0])  # fmt: skip
        return time.perf_counter() - t0

    def ours(prompt: list[int], cold: bool) -> float:
        if cold:
            engine.reset()
        t0 = time.perf_counter()
        engine.complete(prompt, max_tokens=args.tokens, stop=())
        return time.perf_counter() - t0

    engine.stop_ids = set()  # both decode exactly `tokens` tokens
    hf_run(), ours(ids, True)  # warm-up
    rows = {
        "transformers generate()": [hf_run() for _ in range(args.repeats)],
        "codemill, cold cache": [ours(ids, True) for _ in range(args.repeats)],
        "codemill, same request again": [ours(ids, False) for _ in range(args.repeats)],
    }
    typed, times = prefix, []
    for ch in "return text"[: args.repeats * 2]:
        typed += ch
        times.append(ours(engine.prompt(typed, suffix, path="textwrap.py", max_tokens=args.tokens), False))
    rows["codemill, typing (one request per keystroke)"] = times
    base = statistics.median(rows["transformers generate()"])
    table = Table(
        title=f"{args.tokens}-token greedy completion, prompt {len(ids)} tokens, CPU, {args.threads} threads"
    )
    for col in ("run", "median s", "ms/token", "vs generate()"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, ts in rows.items():
        m = statistics.median(ts)
        table.add_row(name, f"{m:.3f}", f"{1000 * m / args.tokens:.1f}", f"{base / m:.2f}x")
    Console().print(table)
    cfg = engine.model.cfg
    Console().print(
        f"model: {args.model} ({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size})"
    )


if __name__ == "__main__":
    main()
