"""`codemill train` and its plan, verify and plot (flow/train.py, train/plan_report.py,
flow/verify.py, train/metrics.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from codemill.cli.shared import console
from codemill.flow.settings import train_settings

train_app = typer.Typer(
    help="Train a model (paper §III-A, §III-D); `codemill train plot RUN` draws its loss."
)


@train_app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    corpus: Path = typer.Option(None, help="A curated corpus directory."),
    tokenizer: Path = typer.Option(None, help="tokenizer.json / tokenizer.model or its directory."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (rerun the same command to resume)."),
    recipe: Path = typer.Option(None, help="YAML recipe; its `data:` and `train:` sections set the options."),
    set_: list[str] = typer.Option([], "--set", help="Override: lr=1e-3 (train) or data.seq_len=512 (data)."),
    init_from: Path = typer.Option(
        None, help="A Hugging Face Llama-family checkpoint to continue pretraining."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Build the model on the meta device and print per-module memory; train nothing.",
    ),
    resume_anyway: bool = typer.Option(
        False,
        "--resume-anyway",
        help="Resume a run in --out although its data or optimiser settings changed.",
    ),
) -> None:
    """Train from scratch or continue a checkpoint: `torchrun --nproc-per-node N -m codemill.cli train ...`
    runs the same command on N processes (FSDP2)."""
    if ctx.invoked_subcommand is not None:
        return
    from codemill.flow.train import train_command

    train_command(corpus, tokenizer, out, recipe, set_, init_from, dry_run, resume_anyway, console)


@train_app.command("plan")
def train_plan(
    recipe: Path = typer.Argument(
        ..., help="A recipe; its data and train sections give the model, sequence and batch."
    ),
    gpus: int = typer.Option(8, min=1, help="GPUs in the job (FSDP2 shards over all of them)."),
    gpu_memory: float = typer.Option(80.0, help="Memory per GPU in GiB."),
    peak_tflops: float = typer.Option(989.0, help="Dense bf16 peak per GPU (H100 SXM 989, A100 312)."),
    mfu: float = typer.Option(0.4, help="Model FLOPs utilization to assume."),
    tokens: float = typer.Option(
        None, help="Training tokens (default: the recipe's steps x batch x sequence)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override: micro_batch=2 (train) or data.seq_len=4096."),
    sbatch: Path = typer.Option(
        None, help="Write a Slurm batch script for this plan here (needs --corpus, --tokenizer, --out)."
    ),
    gpus_per_node: int = typer.Option(
        8, min=1, help="With --sbatch: GPUs per node (--gpus must be a multiple)."
    ),
    cpu: bool = typer.Option(
        False, help="With --sbatch: --gpus CPU processes (gloo) on one node, to try the script."
    ),
    corpus: Path = typer.Option(None, help="With --sbatch: the corpus to train on."),
    tokenizer: Path = typer.Option(None, help="With --sbatch: the tokenizer."),
    out: Path = typer.Option(
        None, "--out", "-o", help="With --sbatch: the run directory (checkpoints, logs)."
    ),
    partition: str = typer.Option(None, help="With --sbatch: the Slurm partition (default: the cluster's)."),
    time: str = typer.Option(
        "24:00:00", help="With --sbatch: the time limit of one job; it requeues itself."
    ),
    cpus_per_task: int = typer.Option(
        None, help="With --sbatch: CPUs for each node's torchrun and its processes."
    ),
    signal_s: int = typer.Option(
        120, help="With --sbatch: seconds before the limit SIGUSR1 asks for a checkpoint."
    ),
) -> None:
    """Will a step fit in GPU memory, and how long will the token budget take? (nothing is allocated)
    With --sbatch, also the batch script that runs it under Slurm."""
    from codemill.train.plan_report import print_plan, write_sbatch

    dcfg, tcfg = train_settings(recipe, set_)
    planned = print_plan(recipe, dcfg, tcfg, console, gpus=gpus, gpu_memory=gpu_memory, peak_tflops=peak_tflops,
                         mfu=mfu, tokens=tokens)  # fmt: skip
    if sbatch:
        write_sbatch(sbatch, recipe, set_, planned, mfu, console, gpus=gpus, gpus_per_node=0 if cpu else gpus_per_node,
                     corpus=corpus, tokenizer=tokenizer, out=out, partition=partition, time=time,
                     cpus_per_task=cpus_per_task, signal_s=signal_s)  # fmt: skip


@train_app.command("verify")
def train_verify(
    run: Path = typer.Argument(..., help="A `codemill train` run directory (or its state/)."),
) -> None:
    """Check every checkpoint of a run against the sizes and checksums its meta.json records; exit 1
    when one fails (a resume would skip it and take the newest that verifies)."""
    from codemill.flow.verify import verify_run

    if not verify_run(run, console):
        raise typer.Exit(1)


@train_app.command("plot")
def train_plot(run: Path = typer.Argument(..., help="A `codemill train` run directory.")) -> None:
    """Write RUN/loss.png: the loss curve, total and per objective."""
    from codemill.train.metrics import plot

    console.print(f"wrote {plot(run)}")
