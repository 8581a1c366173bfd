"""Training-step throughput of codemill's model against transformers' LlamaForCausalLM.

Same config, same batch, same threads, same optimizer (AdamW, foreach), fp32 on CPU: forward, loss,
backward and optimizer step, timed over the same number of steps after warm-up, in one run.

    python benchmarks/bench_train.py                  # the field guide's tiny config, vocab 49,152
    python benchmarks/bench_train.py --preset demo
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from transformers import LlamaConfig, LlamaForCausalLM

from codemill.model.hf import to_hf_config
from codemill.model.llama import Llama, ModelConfig, preset


def step_time(model, step_fn, steps: int, warmup: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        step_fn().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="A model preset instead of the tiny config.")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = (
        preset(args.preset)
        if args.preset
        else ModelConfig(
            vocab_size=49152,
            hidden_size=256,
            intermediate_size=688,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
        )
    )
    torch.manual_seed(0)
    ours = Llama(cfg)
    ours.init_weights()
    hf_cfg = to_hf_config(cfg)
    hf_cfg.pop("architectures"), hf_cfg.pop("model_type")
    theirs = LlamaForCausalLM(LlamaConfig(**hf_cfg, attn_implementation="sdpa"))
    theirs.load_state_dict(ours.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    ours.train(), theirs.train()
    runs = {
        "transformers LlamaForCausalLM": lambda: theirs(input_ids=x, labels=ids[:, :-1]).loss,
        "codemill Llama": lambda: ours(x, targets=y).mean(),
    }
    tokens = args.batch * args.seq_len
    table = Table(
        title=f"training step, CPU fp32, {args.threads} threads, batch {args.batch} x {args.seq_len}"
    )
    for col in ("model", "s/step", "tokens/s", "vs transformers"):
        table.add_column(col, justify="left" if col == "model" else "right")
    results = {
        name: step_time(m, fn, args.steps, args.warmup)
        for (name, fn), m in zip(runs.items(), (theirs, ours), strict=True)
    }
    base = results["transformers LlamaForCausalLM"]
    for name, t in results.items():
        table.add_row(name, f"{t:.3f}", f"{tokens / t:,.0f}", f"{base / t:.2f}x")
    Console().print(table)
    n = ours.num_params()
    Console().print(
        f"config: {cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, {n / 1e6:.1f}M parameters"
    )


if __name__ == "__main__":
    main()
