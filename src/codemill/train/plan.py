"""Before renting a cluster: does a recipe's training step fit in GPU memory, and how long does its
token budget take?

The model is built on the meta device (no memory is allocated) and one micro-batch's forward and loss
are walked there in bf16; the tensors autograd keeps for backward are counted per module, with and
without activation checkpointing. That is measured, not a formula, so it follows the model code.
Model states follow FSDP2 with mixed precision (fp32 sharded parameters, gradients and AdamW moments;
bf16 parameters gathered one block at a time). With LoRA (`meta_model(..., lora=...)`) only the
adapters have fp32 parameters, gradients and moments; the frozen base is held once in bf16 (sharded
over GPUs, gathered a block at a time as above when there are several), and the activations are those
autograd keeps when the base needs no gradients, measured the same way. Time follows model FLOPs per token (6N plus attention,
`train/metrics.py`) at an assumed MFU, the convention of PaLM, Megatron-LM and torchtitan reports.
"""

from __future__ import annotations

import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from codemill.model.llama import Llama
from codemill.train.metrics import flops_per_token

GIB = 1024**3
CONTEXT_BYTES = 1 * GIB  # the CUDA context, NCCL buffers and allocator slack beyond the tensors counted


@dataclass
class Activations:
    per_module: dict[str, int]  # bytes kept for backward, by module (embed, layers.N, head)
    total: int
    recompute: int  # with checkpointing: one block's activations, rebuilt during its backward


def meta_model(cfg, dtype: torch.dtype = torch.bfloat16, lora: dict | None = None) -> Llama:
    """The model on meta; with `lora` (model/lora.py's rank, alpha, dropout, targets) with adapters
    and its base frozen, as training builds it."""
    with torch.device("meta"):
        model = Llama(cfg).to(dtype)
    if lora:
        from codemill.model.lora import add_adapters

        add_adapters(model, **lora, seed=0)
    return model


def saved_activations(model: Llama, micro_batch: int, seq_len: int, checkpointing: bool,
                      loss_chunk: int = 4096) -> Activations:  # fmt: skip
    """Bytes autograd saves for backward during one forward and loss on the meta device, per module."""
    model.train()
    model.checkpointing = checkpointing
    names = {id(m): n for n, m in model.named_modules()}
    stack, per = ["head"], Counter()
    owner: dict[int, tuple[str, int]] = {
        id(p): ("", 0) for p in model.parameters()
    }  # weights are not activations

    def base(t: torch.Tensor) -> torch.Tensor:
        while t._base is not None:  # a view keeps its base: count the base, once
            t = t._base
        return t

    def enter(m, args):
        stack.append(names[id(m)].removeprefix("model."))
        x = base(args[0]) if isinstance(args[0], torch.Tensor) else None
        if x is not None and owner.get(id(x), ("", 0))[0] == "head":  # a checkpoint kept the block's input
            per["head"] -= owner[id(x)][1]
            per[stack[-1]] += owner[id(x)][1]
            owner[id(x)] = (stack[-1], owner[id(x)][1])

    def leave(*_):
        stack.pop()

    def pack(t: torch.Tensor):
        b = base(t)
        if id(b) not in owner:
            owner[id(b)] = (stack[-1], b.numel() * b.element_size())
            per[stack[-1]] += owner[id(b)][1]
        return t

    parts = [model.model.embed_tokens, *model.model.layers]
    hooks = [h for m in parts for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        ids = torch.zeros(micro_batch, seq_len + 1, dtype=torch.long, device="meta")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids[:, :-1], targets=ids[:, 1:], loss_chunk=loss_chunk)
    finally:
        for h in hooks:
            h.remove()
        model.checkpointing = False
    recompute = 0
    if checkpointing:  # a block's backward first rebuilds what it would have kept
        recompute = saved_activations(model, micro_batch, seq_len, False, loss_chunk).per_module["layers.0"]
    return Activations(dict(per), sum(per.values()), recompute)


def plan(model: Llama, *, seq_len: int, micro_batch: int, global_batch: int, tokens: float, gpus: int,
         gpu_memory_gb: float, peak_tflops: float, mfu: float, loss_chunk: int = 4096) -> dict:  # fmt: skip
    """Memory per GPU with and without activation checkpointing, and time for `tokens`. A model
    with frozen parameters (LoRA) trains only the others."""
    n = model.num_params()
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = [sum(p.numel() for p in b.parameters()) for b in model.model.layers]
    root = n - sum(blocks)  # embeddings, final norm and head: FSDP2's root unit
    states = 16 * trained / gpus  # fp32 parameters, gradients, AdamW's two moments; all sharded
    frozen = 2 * (n - trained) / gpus  # bf16 (LoRA's base)
    # gathered bf16 parameters of the unit in compute and the one prefetched, and a unit's unsharded
    # gradients (bf16, then fp32 for the reduce-scatter); LoRA: one GPU holds its base whole, and a
    # block's adapter gradients are negligible
    unit = max(max(blocks), root)
    full = trained == n
    gathered = (2 * 2 * unit if full or gpus > 1 else 0) + ((2 + 4) * unit if full else 0)
    memory = {}
    for ckpt in (False, True):
        act = saved_activations(model, micro_batch, seq_len, ckpt, loss_chunk)
        logits = 3 * 4 * min(loss_chunk, micro_batch * seq_len) * model.cfg.vocab_size  # a loss chunk
        total = states + frozen + gathered + act.total + act.recompute + logits + CONTEXT_BYTES
        memory["checkpointing" if ckpt else "no checkpointing"] = {
            "activations": act.total + act.recompute,
            "total": total,
            "fits": total <= gpu_memory_gb * GIB,
            "per_module": act.per_module,
        }
    fpt = flops_per_token(model, seq_len)
    per_gpu = mfu * peak_tflops * 1e12 / fpt  # tokens per second per GPU
    gpu_hours = tokens / per_gpu / 3600
    return {
        "parameters": n,
        "non_embedding": model.num_params(embeddings=False),
        "trained": trained,
        "states": states,
        "frozen": frozen,
        "gathered": gathered,
        "memory": memory,
        "flops_per_token": fpt,
        "tokens_per_s_per_gpu": per_gpu,
        "steps": tokens / (global_batch * seq_len),
        "gpu_hours": gpu_hours,
        "days": gpu_hours / gpus / 24,
    }


# torchrun's launcher dies on a signal it does not handle; SIGUSR1 is the one Slurm's --signal sends
LAUNCHER_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def sbatch_script(train_args: list[str], out: Path, *, nodes: int, procs_per_node: int, gpus_per_node: int,
                  time: str, partition: str | None = None, cpus_per_task: int | None = None,
                  signal_s: int = 120, job_name: str = "codemill-train",
                  comment: str = "") -> str:  # fmt: skip
    """A batch script that runs `codemill train` (its arguments after `train`) as the plan sized it:
    one `srun` task per node starts torchrun, whose processes meet at the job's first node (the
    rendezvous comes from Slurm's node list and job id, so no address or port is written in). SIGUSR1 comes
    `signal_s` before the time limit or a preemption; the run checkpoints, writes stopped.json and
    exits; the script then requeues the job, which resumes from that checkpoint with the same id."""
    out = Path(out).resolve()
    sb = {"job-name": job_name, "nodes": nodes, "ntasks-per-node": 1, "cpus-per-task": cpus_per_task,
          "gpus-per-node": gpus_per_node or None, "time": time, "partition": partition, "requeue": "",
          "signal": f"USR1@{signal_s}", "open-mode": "append", "output": f"{out}/slurm-%j.out"}  # fmt: skip
    head = [f"#SBATCH --{k}={v}" if v != "" else f"#SBATCH --{k}" for k, v in sb.items() if v is not None]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=$SLURM_JOB_NUM_NODES",
              f"--nproc-per-node={procs_per_node}", "--rdzv-backend=c10d", "--rdzv-endpoint=$head:$port",
              "--rdzv-id=$SLURM_JOB_ID", f"--signals-to-handle={LAUNCHER_SIGNALS}",
              f"--shutdown-timeout={signal_s}", "-m", "codemill.cli", "train", *train_args]  # fmt: skip
    # the $SLURM_* words stay unquoted-expandable; everything else is quoted for the shell
    cmd = " ".join(f'"{a}"' if "$" in a else shlex.quote(a) for a in launch)
    marker = shlex.quote(str(out / "stopped.json"))
    lines = [
        "#!/bin/bash",
        *(f"# {c}" for c in comment.splitlines()),
        *head,
        "set -u",
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "port=$((20000 + SLURM_JOB_ID % 20000))  # jobs sharing a node meet at different ports",
        f"rm -f {marker}",
        'echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"',
        f"srun --kill-on-bad-exit=1 {cmd}",
        "rc=$?",
        f"if [ -e {marker} ]; then",
        f'  echo "stopped: $(cat {marker}); requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"
