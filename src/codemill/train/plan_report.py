"""What `codemill train --dry-run` and `codemill train plan` print, and the batch script a plan
writes: train/plan.py's measurements laid out for a person deciding what to rent."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from codemill.errors import UserError, writable
from codemill.train.plan import meta_model, plan, saved_activations, sbatch_script


def meta_for(dcfg, tcfg):
    """The model the settings train, on the meta device (nothing allocated)."""
    from codemill.model.hf import hf_config
    from codemill.train.loop import _lora, model_config

    cfg = (
        hf_config(tcfg.init_from, **tcfg.model) if tcfg.init_from else model_config(tcfg, None, dcfg.seq_len)
    )
    return meta_model(cfg, lora=_lora(tcfg) if tcfg.lora_rank else None)


def print_memory(dcfg, tcfg, console) -> None:
    """`codemill train --dry-run`: per-module parameters and the activations one micro-batch keeps
    for backward, with and without checkpointing (equal blocks in one row)."""
    model = meta_for(dcfg, tcfg)
    kept = {
        ck: saved_activations(model, tcfg.micro_batch, dcfg.seq_len, ck, tcfg.loss_chunk)
        for ck in (False, True)
    }
    mib = lambda n: f"{n / 1024**2:,.1f}"  # noqa: E731
    rows: list[list] = []  # [name, parameters, kept, kept with checkpointing]; equal blocks in one row
    head = [model.model.norm] + (
        [] if model.cfg.tie_embeddings else [model.lm_head]
    )  # tied: with the embeddings
    parts = {"embed_tokens": [model.model.embed_tokens], **{f"layers.{i}": [b] for i, b in enumerate(model.model.layers)},
             "head": head}  # fmt: skip
    for name, mods in parts.items():
        row = [name, sum(p.numel() for m in mods for p in m.parameters()),
               *(kept[ck].per_module.get(name, 0) for ck in (False, True))]  # fmt: skip
        if (
            rows
            and name.startswith("layers.")
            and rows[-1][0].startswith("layers.")
            and rows[-1][1:] == row[1:]
        ):
            rows[-1][0] = rows[-1][0].split("-")[0].removesuffix(" (each)") + f"-{name.split('.')[1]} (each)"
        else:
            rows.append(row)
    title = f"one micro-batch: {tcfg.micro_batch} x {dcfg.seq_len} tokens in bf16 (meta device: nothing allocated)"
    table = Table(title=title)
    for col in ("module", "parameters", "bf16 MiB", "kept for backward MiB", "with checkpointing MiB"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for name, n, a, b in rows:
        table.add_row(name, f"{n:,}", mib(2 * n), mib(a), mib(b))
    total = model.num_params()
    table.add_row(
        "total", f"{total:,}", mib(2 * total), mib(kept[False].total), mib(kept[True].total), style="bold"
    )
    console.print(table)
    console.print(f"with checkpointing, a block's backward first rebuilds its {mib(kept[True].recompute)} MiB; "
                  "`codemill train plan` adds optimizer state, FSDP2 sharding and time")  # fmt: skip


def print_plan(recipe: Path, dcfg, tcfg, console, *, gpus: int, gpu_memory: float, peak_tflops: float,
               mfu: float, tokens: float | None) -> dict:  # fmt: skip
    """`codemill train plan`: memory per GPU in each mode and the time the token budget takes, for
    the batch `codemill train` accepts on `gpus` GPUs; return the plan."""
    from codemill.train.dist import Dist
    from codemill.train.loop import _plan

    try:  # the batch `codemill train` accepts on that many GPUs
        _plan(tcfg, Dist(world=gpus))
    except UserError as e:
        raise UserError(f"{e} (world size: --gpus {gpus}); change --gpus, or --set the batch") from None
    model = meta_for(dcfg, tcfg)
    budget = tokens or tcfg.max_steps * tcfg.global_batch * dcfg.seq_len
    p = plan(model, seq_len=dcfg.seq_len, micro_batch=tcfg.micro_batch, global_batch=tcfg.global_batch,
             tokens=budget, gpus=gpus, gpu_memory_gb=gpu_memory, peak_tflops=peak_tflops, mfu=mfu,
             loss_chunk=tcfg.loss_chunk)  # fmt: skip
    table = Table(
        title=f"{recipe}: {p['parameters'] / 1e9:.2f}B parameters on {gpus} GPUs of {gpu_memory:g} GiB"
    )
    table.add_column("per GPU, GiB", justify="left")
    modes = list(p["memory"])
    for m in modes:
        table.add_column(m, justify="right")
    gib = lambda n: f"{n / 1024**3:,.1f}"  # noqa: E731
    both = lambda v: [gib(v)] * len(modes)  # noqa: E731
    table.add_row("fp32 parameters, gradients, AdamW moments (sharded)", *both(p["states"]))
    if p["frozen"]:
        table.add_row("frozen base, bf16 (LoRA)", *both(p["frozen"]))
    table.add_row("gathered bf16 block and its gradients", *both(p["gathered"]))
    table.add_row(
        f"activations, micro-batch {tcfg.micro_batch} x {dcfg.seq_len}",
        *(gib(p["memory"][m]["activations"]) for m in modes),
    )
    table.add_row(
        "total (with a loss chunk and 1 GiB of context)",
        *(gib(p["memory"][m]["total"]) for m in modes),
        style="bold",
    )
    table.add_row("fits", *("yes" if p["memory"][m]["fits"] else "[red]no[/red]" for m in modes))
    console.print(table)
    console.print(f"{p['flops_per_token'] / 1e9:.1f} GFLOP per token; at {mfu:.0%} MFU of {peak_tflops:g} TFLOPS: "
                  f"{p['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU; {budget:.3g} tokens = {p['steps']:,.0f} steps of "
                  f"{tcfg.global_batch} x {dcfg.seq_len}, {p['gpu_hours']:,.0f} GPU-hours, {p['days']:.1f} days on {gpus} GPUs")  # fmt: skip
    return p


def write_sbatch(path: Path, recipe: Path, overrides: list[str], planned: dict, mfu: float, console, *, gpus: int,
                 gpus_per_node: int, corpus: Path | None, tokenizer: Path | None, out: Path | None,
                 **slurm) -> None:  # fmt: skip
    """`train plan --sbatch`: the batch script of the plan `planned`, `gpus` processes over nodes of
    `gpus_per_node` (0: one CPU node), training with the recipe and `--set` overrides given."""
    if corpus is None or tokenizer is None or out is None:
        raise UserError("--sbatch writes the command that trains: give --corpus, --tokenizer and --out too")
    if gpus_per_node and gpus % gpus_per_node:
        raise UserError(f"--gpus {gpus} is not a multiple of --gpus-per-node {gpus_per_node}")
    nodes, per_node = (gpus // gpus_per_node, gpus_per_node) if gpus_per_node else (1, gpus)
    args = ["--corpus", str(corpus.resolve()), "--tokenizer", str(tokenizer.resolve()), "--out",
            str(out.resolve()), "--recipe", str(recipe.resolve())] + [a for s in overrides for a in ("--set", s)]  # fmt: skip
    writable(out)
    writable(path, directory=False)
    comment = (f"codemill train plan {recipe} --gpus {gpus}: {planned['steps']:,.0f} steps, "
               f"{planned['gpu_hours']:,.0f} GPU-hours at {mfu:.0%} MFU")  # fmt: skip
    path.write_text(sbatch_script(args, out, nodes=nodes, procs_per_node=per_node, gpus_per_node=gpus_per_node,
                                  comment=comment, **slurm))  # fmt: skip
    console.print(f"wrote {path}: {nodes} node(s) x {per_node} processes; `sbatch {path}` submits it")
