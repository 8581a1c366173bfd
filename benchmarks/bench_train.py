"""Training-step throughput of codemill's model against transformers' LlamaForCausalLM.

Same config, same batch, same threads, same optimizer (AdamW, foreach), fp32 on CPU: forward, loss,
backward and optimizer step, timed over the same number of steps after warm-up, in one run.

    python benchmarks/bench_train.py                  # the field guide's tiny config, vocab 49,152
    python benchmarks/bench_train.py --preset demo

On a GPU, as the trainer runs there (benchmarks/gpu_check.sh): bf16 autocast, each block compiled,
the trainer's own optimizer (train/optim.py), tokens/s and MFU against the device's bf16 peak
(train/metrics.py: the FLOP count of the progress bar), codemill alone:

    python benchmarks/bench_train.py --preset 1b --seq-len 4096 --batch 4 --device cuda --dtype bf16 \
        --compile --no-reference --json bench_train.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from codemill.model.hf import to_hf_config
from codemill.model.llama import Llama, ModelConfig, preset


def step_time(model, step_fn, steps: int, warmup: int, device: torch.device, opt=None) -> float:
    opt = opt or torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        step_fn().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="A model preset instead of the tiny config.")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--dtype", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast, as the trainer"
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile each block, as the trainer")
    ap.add_argument("--no-reference", action="store_true", help="time codemill only (no transformers)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="for MFU (default: the device table)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
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
    cfg.max_seq_len = max(cfg.max_seq_len, args.seq_len)
    torch.manual_seed(0)
    with device:  # built where it trains: a 1B model initialises in seconds on a GPU, not on its CPU
        ours = Llama(cfg)
        ours.init_weights()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1))
    x, y = ids[:, :-1].to(device), ids[:, 1:].to(device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.dtype == "bf16"
        else contextlib.nullcontext()
    )
    runs, models, opts = {}, {}, {}
    if not args.no_reference:
        from transformers import LlamaConfig, LlamaForCausalLM

        hf_cfg = to_hf_config(cfg)
        hf_cfg.pop("architectures"), hf_cfg.pop("model_type")
        theirs = LlamaForCausalLM(LlamaConfig(**hf_cfg, attn_implementation="sdpa"))
        theirs.load_state_dict(ours.state_dict())
        theirs.to(device).train()

        def hf_step():
            with autocast:
                return theirs(input_ids=x, labels=ids[:, :-1].to(device)).loss

        runs["transformers LlamaForCausalLM"], models["transformers LlamaForCausalLM"] = hf_step, theirs
    ours.to(device).train()
    if args.compile:
        for block in ours.model.layers:
            block.compile()
    if device.type != "cpu":  # the trainer's optimizer: no decay on norms and embeddings
        from codemill.train.config import TrainConfig
        from codemill.train.optim import build_optimizer

        opts["codemill Llama"] = build_optimizer(ours, TrainConfig(lr=1e-4))

    def our_step():
        with autocast:
            return ours(x, targets=y).mean()

    runs["codemill Llama"], models["codemill Llama"] = our_step, ours
    tokens = args.batch * args.seq_len
    where = f"{device.type} {args.dtype}" + (", compiled" if args.compile else "")
    if device.type == "cpu":
        where += f", {args.threads} threads"
    table = Table(title=f"training step, {where}, batch {args.batch} x {args.seq_len}")
    cols = ("model", "s/step", "tokens/s", "vs transformers")
    from codemill.train.metrics import flops_per_token, peak_flops

    fpt = flops_per_token(ours, args.seq_len)
    peak = peak_flops(device, args.peak_tflops * 1e12)
    if peak:
        cols += ("TFLOP/s", "MFU")
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    results = {
        name: step_time(models[name], fn, args.steps, args.warmup, device, opts.get(name))
        for name, fn in runs.items()
    }
    wall = time.perf_counter() - t0
    base = results.get("transformers LlamaForCausalLM")
    for name, t in results.items():
        row = [name, f"{t:.3f}", f"{tokens / t:,.0f}", f"{base / t:.2f}x" if base else "-"]
        if peak:
            row += [f"{tokens / t * fpt / 1e12:.1f}", f"{tokens / t * fpt / peak:.1%}"]
        table.add_row(*row)
    Console().print(table)
    n = ours.num_params()
    Console().print(
        f"config: {cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, {n / 1e6:.1f}M parameters"
    )
    if args.json:
        t = results["codemill Llama"]
        out = {
            "preset": args.preset or "tiny",
            "parameters": n,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": args.dtype,
            "compiled": args.compile,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "steps": args.steps,
            "warmup": args.warmup,
            "s_per_step": t,
            "tokens_per_s": tokens / t,
            "flops_per_token": fpt,
            "tflops": tokens / t * fpt / 1e12,
            "peak_tflops": peak / 1e12 if peak else None,
            "mfu": tokens / t * fpt / peak if peak else None,
            "transformers_s_per_step": base,
            "wall_s": wall,  # warm-up and compilation included
            "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda"
            else None,
        }
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
