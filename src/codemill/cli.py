"""The `codemill` command: one group per stage of DESIGN.md's flow, no logic of its own."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console

from codemill.config import load_recipe, parse_overrides
from codemill.data.tokenizer import DEFAULT_PRETOKENIZER
from codemill.errors import FULL, UserError, disk_full

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Build code-completion models the aiXcoder way."
)
corpus_app = typer.Typer(no_args_is_help=True, help="Inspect a curated corpus.")
app.add_typer(corpus_app, name="corpus")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train a tokenizer for code.")
app.add_typer(tokenizer_app, name="tokenizer")
bench_app = typer.Typer(no_args_is_help=True, help="Build benchmarks from held-out repositories.")
bench_build_app = typer.Typer(no_args_is_help=True, help="Build a benchmark of a published shape.")
bench_app.add_typer(bench_build_app, name="build")
app.add_typer(bench_app, name="bench")
train_app = typer.Typer(
    help="Train a model (paper §III-A, §III-D); `codemill train plot RUN` draws its loss."
)
app.add_typer(train_app, name="train")
data_app = typer.Typer(
    no_args_is_help=True, help="The training stream: Algorithm 1, NTP / FIM / SFIM, packing."
)
app.add_typer(data_app, name="data")
export_app = typer.Typer(
    no_args_is_help=True, help="Write a checkpoint for other runtimes (llama.cpp, Ollama)."
)
app.add_typer(export_app, name="export")
console = Console() if sys.stdout.isatty() else Console(width=160)  # logs keep whole rows


@app.callback()
def main(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show the logs of the tools underneath (datatrove) on the console too."
    ),
) -> None:
    if verbose:
        os.environ["CODEMILL_VERBOSE"] = "1"


def _config(cls, recipe: Path | None, overrides: list[str]):
    """A recipe section (`cls.section`) with `--set key=value` overrides applied."""
    return _section(cls, recipe, parse_overrides(overrides))


def _section(cls, recipe: Path | None, given: dict):
    """A recipe section (`cls.section`) with the parsed `--set` values `given` applied."""
    return cls.from_dict({**(load_recipe(recipe)[cls.section] if recipe else {}), **given})


@app.command()
def curate(
    sources: list[str] = typer.Argument(
        ...,
        help="Directories, git repositories, archives, Stack-style .parquet/.jsonl, npm:PKG@VER,... or npm:FILE, or 'installed'.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Corpus directory (rerun the same command to resume)."),
    recipe: Path = typer.Option(None, help="YAML recipe; its `curate:` section sets the options."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting, e.g. --set tasks=8."),
    executor: str = typer.Option("local", help="datatrove executor: local, ray or slurm."),
    partition: str = typer.Option(None, help="slurm: the partition (curate.slurm_partition)."),
    time: str = typer.Option(None, help="slurm: the time limit of one task (curate.slurm_time)."),
    cpus_per_task: int = typer.Option(None, help="slurm: CPUs per task (curate.slurm_cpus_per_task)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="slurm: print the batch scripts; submit nothing."),
) -> None:
    """Curate repositories into a corpus (paper §II)."""
    from codemill.curate.config import CurateConfig
    from codemill.curate.pipeline import curate as run
    from codemill.curate.pipeline import require_files, slurm_scripts
    from codemill.curate.report import summary

    given = {"slurm_partition": partition, "slurm_time": time, "slurm_cpus_per_task": cpus_per_task}
    cfg = _section(
        CurateConfig, recipe, parse_overrides(set_) | {k: v for k, v in given.items() if v is not None}
    )
    if dry_run:
        if executor != "slurm":
            raise UserError("--dry-run prints the batch scripts of --executor slurm; add it")
        for name, script in slurm_scripts(sources, out, cfg):
            console.print(f"# ---- stage {name} ----", markup=False, highlight=False)
            console.print(script, markup=False, highlight=False, soft_wrap=True)
        return
    _output(out)
    manifest = run(sources, out, cfg, executor=executor)
    console.print(summary(manifest))
    require_files(manifest, out)
    if manifest.get("already_complete"):
        console.print(f"{out} was already complete for these sources and settings: nothing to do")
        return
    console.print(
        f"corpus written to [bold]{out}[/bold]; `codemill corpus stats {out}` shows examples of every drop reason"
    )


@corpus_app.command("stats")
def corpus_stats(
    corpus: Path, examples: int = typer.Option(2, help="Dropped files shown per reason.")
) -> None:
    """Print a corpus's summary table and examples of each drop reason."""
    from codemill.curate.report import print_stats

    if not (corpus / "manifest.json").exists():
        console.print(
            f"[red]error:[/red] {corpus} has no manifest.json; run `codemill curate ... --out {corpus}` first"
        )
        raise typer.Exit(2)
    print_stats(corpus, examples, console)


@corpus_app.command("audit")
def corpus_audit(
    corpus: Path = typer.Argument(..., help="A curated corpus directory."),
    per_reason: int = typer.Option(
        5, "--per-reason", help="Dropped files shown per reason, redactions per PII tag."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Markdown page (default DIR/audit.md); PNGs go beside it."
    ),
    seed: int = typer.Option(0, help="Which files the samples take."),
) -> None:
    """Write a page to review before training: dropped files per reason with their excerpts, PII
    redactions in context, and charts of the counts."""
    from codemill.curate.audit import audit

    _output(out, directory=False)
    res = audit(corpus, per_reason, out, seed)
    charts = ", ".join(str(c) for c in res.charts) or "none"
    console.print(
        f"audit of {len(res.drops)} drop reasons ({res.sampled_drops} files shown) and "
        f"{len(res.redactions)} PII tags ({res.sampled_redactions} redactions shown) written to "
        f"[bold]{res.page}[/bold]; charts: {charts}"
    )


CORPUS = typer.Argument(..., help="A curated corpus directory.")
TOKENIZER = typer.Option(..., help="tokenizer.json / tokenizer.model or its directory.")
DATA_RECIPE = typer.Option(None, help="YAML recipe; its `data:` section sets the options.")
DATA_SET = typer.Option([], "--set", help="Override a data setting, e.g. --set seq_len=4096.")


@tokenizer_app.command("train")
def tokenizer_train(
    corpus: Path = CORPUS,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for tokenizer.json and its config."),
    vocab_size: int = typer.Option(49152, help="Ids in all, special tokens included (49,152 for the 7B)."),
    format: str = typer.Option("codemill", help="Format whose special tokens the vocabulary reserves."),
    max_bytes: int = typer.Option(1 << 30, help="Train on at most this much text (1 GB: the notes' advice)."),
    pretokenizer: str = typer.Option(
        DEFAULT_PRETOKENIZER,
        help="How text is split before merging: qwen2, llama3, starcoder, deepseek-coder (llama.cpp "
        "runs these exactly) or codemill (ours; no GGUF export).",
    ),
) -> None:
    """Train a byte-level BPE for code on a corpus (a pre-tokenizer llama.cpp implements exactly)."""
    import time

    from codemill.data.tokenizer import save_tokenizer, train_bpe, training_texts
    from codemill.formats import get_format

    fmt = get_format(format)
    _output(out)
    t0 = time.perf_counter()
    texts, n = training_texts(corpus, max_bytes)
    tok = train_bpe(texts, vocab_size, fmt, show_progress=True, pretokenizer=pretokenizer, length=n)
    save_tokenizer(tok, out, fmt)
    console.print(
        f"tokenizer with {tok.get_vocab_size():,} ids trained in {time.perf_counter() - t0:.1f} s; "
        f"written to [bold]{out}[/bold]"
    )


def _stream(corpus: Path, tokenizer: Path, recipe: Path | None, set_: list[str], stats=None, epochs=None):
    from codemill.data.config import DataConfig
    from codemill.data.stream import TrainingStream
    from codemill.data.tokenizer import load_tokenizer

    cfg = _config(DataConfig, recipe, set_)
    return TrainingStream(corpus, load_tokenizer(tokenizer), cfg, stats=stats, epochs=epochs)


@data_app.command("preview")
def data_preview(
    corpus: Path = CORPUS,
    tokenizer: Path = TOKENIZER,
    recipe: Path = DATA_RECIPE,
    set_: list[str] = DATA_SET,
    docs: int = typer.Option(6, help="Documents to show."),
    repo: str = typer.Option(None, help="Show this repository's documents."),
    chars: int = typer.Option(600, help="Characters shown per segment."),
) -> None:
    """Print training documents with prefix, suffix and middle in colour, naming ordering and objective."""
    from codemill.data.preview import preview

    preview(_stream(corpus, tokenizer, recipe, set_), console, docs, chars, repo)


@data_app.command("stats")
def data_stats(
    corpus: Path = CORPUS,
    tokenizer: Path = TOKENIZER,
    recipe: Path = DATA_RECIPE,
    set_: list[str] = DATA_SET,
    windows: int = typer.Option(0, help="Stop after this many windows (0: one pass over the corpus)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the numbers as JSON here."),
) -> None:
    """Realized objective mix, PSM/SPM split, SFIM middle lengths, fallbacks, tokens per file."""
    import json

    from codemill.data.stats import StreamStats
    from codemill.progress import Bar

    _output(json_out, directory=False)
    stats = StreamStats()
    stream = _stream(corpus, tokenizer, recipe, set_, stats, epochs=None if windows else 1)
    repos = len(stream.sources["code"]) - len(stream.excluded)  # one pass visits each once
    with Bar(console) as bar:
        task = bar.add_task("windows" if windows else "repositories", total=windows or repos)
        for _ in stream:
            bar.update(task, completed=stats.windows if windows else stats.repos)
            if stats.windows == windows:
                break
    cfg = stream.cfg
    console.print(
        f"rules: Algorithm 1 strategies {cfg.ordering}; objectives drawn per {cfg.objective_unit} "
        f"{cfg.code_objectives}; SFIM {cfg.sfim_policy} rule; FIM layouts {cfg.fim_layouts}"
    )
    for table in stats.tables():
        console.print(table)
    if cfg.objective_unit == "repo" and stats.repos:
        p = cfg.code_objectives.get("sfim", 0.0)
        sd = (p * (1 - p) / stats.repos) ** 0.5
        console.print(
            f"{stats.windows:,} windows reached {stats.repos:,} repositories: the objective is drawn once per "
            f"repository, so the SFIM-drawn share of repositories varies by about ±{sd:.0%} (one sd) from "
            f"the {p:.0%} drawn at this count, and the share of tokens more, as repositories differ in size"
        )
    if json_out:
        json_out.write_text(json.dumps(stats.summary(), indent=2) + "\n")


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
    from codemill.train.loop import train as run

    if dry_run:
        dcfg, tcfg = _train_configs(recipe, set_)
        return _dry_run(dcfg, tcfg)
    if corpus is None or out is None:
        raise UserError("--corpus and --out are needed (and --tokenizer unless --init-from has one)")
    dcfg, tcfg = _train_configs(recipe, set_)
    if init_from is not None:
        tcfg.init_from = str(init_from)
    tokenizer = tokenizer or (Path(tcfg.init_from) if tcfg.init_from else None)
    if tokenizer is None:
        raise UserError("--tokenizer is needed; train one with `codemill tokenizer train`")
    _output(out)
    final = run(corpus, tokenizer, out, dcfg, tcfg, console, resume_anyway)
    console.print(
        f"model written to [bold]{final}[/bold] (Hugging Face Llama layout); `codemill train plot {out}` draws the loss"
    )


def _train_configs(recipe: Path | None, overrides: list[str]):
    """The recipe's data and train sections, `--set data.x=...` and `--set x=...` applied."""
    from codemill.data.config import DataConfig
    from codemill.train.config import TrainConfig

    given = parse_overrides(overrides)
    data_set = {k.removeprefix("data."): v for k, v in given.items() if k.startswith("data.")}
    train_set = {k.removeprefix("train."): v for k, v in given.items() if not k.startswith("data.")}
    return _section(DataConfig, recipe, data_set), _section(TrainConfig, recipe, train_set)


def _meta(dcfg, tcfg):
    from codemill.model.hf import hf_config
    from codemill.train.loop import _lora, model_config
    from codemill.train.plan import meta_model

    cfg = (
        hf_config(tcfg.init_from, **tcfg.model) if tcfg.init_from else model_config(tcfg, None, dcfg.seq_len)
    )
    return meta_model(cfg, lora=_lora(tcfg) if tcfg.lora_rank else None)


def _dry_run(dcfg, tcfg) -> None:
    from rich.table import Table

    from codemill.train.plan import saved_activations

    model = _meta(dcfg, tcfg)
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
    from rich.table import Table

    from codemill.train.dist import Dist
    from codemill.train.loop import _plan
    from codemill.train.plan import plan

    dcfg, tcfg = _train_configs(recipe, set_)
    try:  # the batch `codemill train` accepts on that many GPUs
        _plan(tcfg, Dist(world=gpus))
    except UserError as e:
        raise UserError(f"{e} (world size: --gpus {gpus}); change --gpus, or --set the batch") from None
    model = _meta(dcfg, tcfg)
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
    if sbatch:
        _write_sbatch(sbatch, recipe, set_, gpus, 0 if cpu else gpus_per_node, corpus, tokenizer, out,
                      partition=partition, time=time, cpus_per_task=cpus_per_task, signal_s=signal_s,
                      comment=f"codemill train plan {recipe} --gpus {gpus}: {p['steps']:,.0f} steps, "
                      f"{p['gpu_hours']:,.0f} GPU-hours at {mfu:.0%} MFU")  # fmt: skip


def _write_sbatch(path: Path, recipe: Path, set_: list[str], gpus: int, gpus_per_node: int, corpus: Path | None,
                  tokenizer: Path | None, out: Path | None, **slurm) -> None:  # fmt: skip
    """The plan's batch script: `--gpus` processes over nodes of `gpus_per_node` (0: one CPU node)."""
    from codemill.train.plan import sbatch_script

    if corpus is None or tokenizer is None or out is None:
        raise UserError("--sbatch writes the command that trains: give --corpus, --tokenizer and --out too")
    if gpus_per_node and gpus % gpus_per_node:
        raise UserError(f"--gpus {gpus} is not a multiple of --gpus-per-node {gpus_per_node}")
    nodes, per_node = (gpus // gpus_per_node, gpus_per_node) if gpus_per_node else (1, gpus)
    args = ["--corpus", str(corpus.resolve()), "--tokenizer", str(tokenizer.resolve()), "--out",
            str(out.resolve()), "--recipe", str(recipe.resolve())] + [a for s in set_ for a in ("--set", s)]  # fmt: skip
    _output(out)
    _output(path, directory=False)
    path.write_text(sbatch_script(args, out, nodes=nodes, procs_per_node=per_node, gpus_per_node=gpus_per_node,
                                  **slurm))  # fmt: skip
    console.print(f"wrote {path}: {nodes} node(s) x {per_node} processes; `sbatch {path}` submits it")


@train_app.command("verify")
def train_verify(
    run: Path = typer.Argument(..., help="A `codemill train` run directory (or its state/)."),
) -> None:
    """Check every checkpoint of a run against the sizes and checksums its meta.json records; exit 1
    when one fails (a resume would skip it and take the newest that verifies)."""
    from rich.table import Table

    from codemill.train import checkpoint

    state = run / "state" if (run / "state").is_dir() else run
    found = sorted(p for p in state.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    if not found:
        raise UserError(
            f"{state} holds no checkpoints (step-N directories); is {run} a `codemill train` run?"
        )
    table = Table("checkpoint", "files", "size", "verdict")
    failed = 0
    for path in found:
        files = [f for f in path.iterdir() if f.is_file()]
        problems = checkpoint.verify(path)
        if path.name.endswith(".bad"):
            problems = problems or ["set aside by a resume"]
        failed += bool(problems)
        size = sum(f.stat().st_size for f in files)
        table.add_row(path.name, str(len(files)), f"{size / 1e6:,.1f} MB", "; ".join(problems) or "ok")
    console.print(table)
    if failed:
        console.print(f"{failed} of {len(found)} checkpoints fail; a resume takes the newest that verifies")
        raise typer.Exit(1)


@train_app.command("plot")
def train_plot(run: Path = typer.Argument(..., help="A `codemill train` run directory.")) -> None:
    """Write RUN/loss.png: the loss curve, total and per objective."""
    from codemill.train.metrics import plot

    console.print(f"wrote {plot(run)}")


@app.command("eval")
def eval_(
    suite: str = typer.Argument(
        ...,
        help="humaneval, mbpp, santacoder-fim, fim-eval, crosscodeeval, multipl-e-cpp|java|js, "
        "humaneval-infilling/single-line|multi-line|random-span|random-span-light, "
        "safim/block|control|api, fim-loss "
        "(bits per byte of FIM middles and held-out files); or compare.",
    ),
    runs: list[Path] = typer.Argument(
        None, help="With `compare`: eval output directories to put side by side."
    ),
    model: str = typer.Option(
        None,
        help="A checkpoint directory, an OpenAI-compatible URL (http://host:port/v1[#model]; key from "
        "$CODEMILL_API_KEY), `reference` (self-test: 100%) or `empty`.",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="results.json and report.md go here (compare: a .md file, and a .png per task type).",
    ),
    format: str = typer.Option(
        None, help="Prompt format of the checkpoint (default: its codemill.json, else codemill)."
    ),
    data: str = typer.Option(
        None, help="The benchmark file (MBPP jsonl, SantaCoder-FIM parquet, SAFIM jsonl)."
    ),
    split: str = typer.Option("all", help="MBPP: all (974, the paper) or test (500, bigcode)."),
    setting: str = typer.Option("retrieval", help="CrossCodeEval: infile, retrieval (BM25 rg1) or oracle."),
    fim_mode: str = typer.Option(
        "psm", help="HumanEval-infilling, SAFIM: the FIM layout, psm or spm (where the format has it)."
    ),
    generations: Path = typer.Option(
        None,
        help="Judge these completions instead of a model's: JSON Lines of {task_id, completion}, "
        "several lines per task for pass@k; tasks not in the file are not judged.",
    ),
    limit: int = typer.Option(None, help="N tasks evenly spaced through the suite, not the first N."),
    samples: int = typer.Option(
        1, help="Samples per task (pass@k for every k up to it); needs --temperature."
    ),
    temperature: float = typer.Option(0.0, help="0: greedy."),
    max_tokens: int = typer.Option(None, help="New tokens per task (default: the suite's, 512 for NL2Code)."),
    syntax_stop: bool = typer.Option(
        False, "--syntax-stop", help="FIM: cut completions where they close a syntactic unit (as serve can)."
    ),
    workers: int = typer.Option(None, help="Parallel sandboxed executions (default: CPU count)."),
    unsafe: bool = typer.Option(
        False, "--unsafe", help="Run generated code without bubblewrap (limits only)."
    ),
    corpus: Path = typer.Option(
        None,
        help="fim-loss: score files of the held-out repositories (--data's heldout_repos.txt) of this corpus.",
    ),
    files: int = typer.Option(200, help="fim-loss: held-out files scored left to right."),
    crossfile: Path = typer.Option(
        None,
        help="fim-loss: a CrossCodeEval-shaped directory; its target lines are scored in-file and with retrieval.",
    ),
) -> None:
    """Evaluate a model like the paper: generate, execute in a sandbox, report.
    `codemill eval compare RUN...` puts runs side by side in the paper's tables."""
    from rich.table import Table

    from codemill.eval.models import Generations, load_model
    from codemill.eval.runner import compare, evaluate
    from codemill.eval.suites import SUITES

    if suite == "compare":
        _output(out, directory=False)
        table = compare(runs or [], out.with_suffix(".png") if out else None)
        console.print(table)
        if out:
            out.write_text(table)
        return
    if suite not in SUITES and suite != "fim-loss":
        raise UserError(
            f"unknown suite {suite!r}; choose one of {', '.join([*SUITES, 'fim-loss', 'compare'])}"
        )
    if (model is None and generations is None) or out is None:
        raise UserError("--model (or --generations) and --out are needed")
    _output(out)
    if generations is None and Path(model).is_dir():  # a checkpoint: whole before anything loads it
        from codemill.model.hf import check_checkpoint

        check_checkpoint(model)
    if suite == "fim-loss":
        if model is None:
            raise UserError("fim-loss scores a checkpoint: --generations does not apply")
        return _fim_loss(model, format, data, out, corpus, files, crossfile, limit)

    # each suite takes the ones it names
    given = {"data": data, "split": split, "setting": setting, "fim_mode": fim_mode}
    spec = SUITES.get(suite)
    options = {k: v for k, v in given.items() if v is not None and spec and k in spec.options}
    results = evaluate(
        suite,
        Generations(generations)
        if generations is not None
        else load_model(model, format, api_key=os.environ.get("CODEMILL_API_KEY")),
        out,
        limit=limit,
        workers=workers,
        unsafe=unsafe,
        samples=samples,
        temperature=temperature,
        max_tokens=max_tokens,
        syntax_stop=syntax_stop,
        console=console,
        **options,
    )
    table = Table(title=f"{suite}: {results['model']}")
    cols = sorted({k for r in results["summary"].values() for k in r} - {"tasks"})
    for c in ("language", "tasks", *cols):
        table.add_column(c, justify="left" if c == "language" else "right")
    for lang, r in results["summary"].items():
        table.add_row(
            lang,
            str(r["tasks"]),
            *(f"{r[c]:.1f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols),
        )
    console.print(table)
    console.print(f"every sample in [bold]{out}/results.json[/bold], the report in {out}/report.md")


def _fim_loss(model: str, format: str | None, data: str | None, out: Path, corpus: Path | None, files: int,
              crossfile: Path | None, limit: int | None) -> None:  # fmt: skip
    from codemill.data.tokenizer import load_tokenizer
    from codemill.eval.loss import fim_loss, heldout_texts, interval
    from codemill.formats import checkpoint_format, trained_context
    from codemill.model.hf import import_hf

    if data is None:
        raise UserError("--data: a FIM-Eval-shaped directory (`codemill bench build fim` writes one)")
    if not (Path(model) / "config.json").exists():
        raise UserError(f"{model}: fim-loss needs a checkpoint directory (it reads the logits)")
    held = Path(data) / "heldout_repos.txt"
    texts = heldout_texts(corpus, held, files) if corpus and held.exists() else []
    net = import_hf(model)
    results = fim_loss(net, load_tokenizer(model), checkpoint_format(model, format), data, out,
                       name=Path(model).name, files=texts, crossfile=crossfile, limit=limit,
                       context=trained_context(model, net.cfg.max_seq_len),
                       console=console)  # fmt: skip
    s = results["summary"]
    console.print(f"fim-loss {results['model']}: FIM middles PSM {interval(s['all'], 'psm_')}, SPM "
                  f"{interval(s['all'], 'spm_')} bits/byte; held-out files {interval(s.get('left-to-right', {}), '')}; "
                  f"{out / 'report.md'}")  # fmt: skip


@bench_build_app.command("fim")
def bench_build_fim(
    corpus: Path = CORPUS,
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory for {language}_test.jsonl and heldout_repos.txt."
    ),
    holdout: float = typer.Option(
        0.1, help="Fraction of repositories held out (by a keyed hash of the name)."
    ),
    per_type: int = typer.Option(100, help="Tasks per task type and language at most."),
    seed: int = typer.Option(0),
) -> None:
    """A FIM-Eval-shaped benchmark (13 task types; Python, Java, JavaScript, C++) from held-out repositories.
    Train with `--set data.exclude_repos=OUT/heldout_repos.txt` so they stay unseen."""
    from rich.table import Table

    from codemill.eval.builders import build_fim

    _output(out)
    got = build_fim(corpus, out, holdout=holdout, per_type=per_type, seed=seed)
    table = Table(title=f"FIM tasks from {got['repos']} held-out repositories")
    table.add_column("language / task type")
    table.add_column("tasks", justify="right")
    for k, n in got["tasks"].items():
        table.add_row(k, str(n))
    console.print(table)
    console.print(
        f"written to [bold]{out}[/bold]; evaluate with `codemill eval fim-eval --data {out} --model ...`"
    )


@bench_build_app.command("crossfile")
def bench_build_crossfile(
    corpus: Path = CORPUS,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for {language}/line_completion*.jsonl."),
    holdout: float = typer.Option(
        0.1, help="Fraction of repositories held out (by a keyed hash of the name)."
    ),
    per_repo: int = typer.Option(20, help="Tasks per repository at most."),
    seed: int = typer.Option(0),
) -> None:
    """A CrossCodeEval-shaped benchmark (in-file, BM25 retrieval, oracle) from held-out repositories."""
    from codemill.eval.builders import build_crossfile

    _output(out)
    got = build_crossfile(corpus, out, holdout=holdout, per_repo=per_repo, seed=seed)
    console.print(
        f"{sum(got['tasks'].values())} tasks {got['tasks']} from {got['repos']} held-out repositories in [bold]{out}[/bold]"
    )
    console.print(
        f"evaluate with `codemill eval crosscodeeval --data {out} --setting infile|retrieval|oracle --model ...`"
    )


@app.command("run")
def run_(
    recipe: Path = typer.Argument(..., help="A recipe: recipes/demo.yaml, recipes/small.yaml, ..."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/RECIPE-NAME)."),
) -> None:
    """The whole flow: curate, tokenizer, held-out benchmarks, train, eval, report. Rerun to resume:
    finished stages with unchanged settings are skipped."""
    from codemill.flow.run import run

    out = out or Path("runs") / recipe.stem
    load_recipe(recipe)  # a bad recipe is named before any output is made
    _output(out)
    _stages_table("codemill run", run(recipe, out, console))


def _stages_table(title: str, seconds: dict[str, float]) -> None:
    from rich.table import Table

    table = Table(title=f"{title}: stages")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, s in seconds.items():
        table.add_row(name, f"{s:.0f}" if s else "up to date")
    console.print(table)


@app.command("adapt")
def adapt_(
    base: Path = typer.Argument(
        ..., help="A Hugging Face checkpoint directory to adapt (its tokenizer in it)."
    ),
    sources: list[str] = typer.Argument(
        ..., help="Your code: directories, git repositories, archives, tables."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (rerun the same command to resume)."),
    recipe: Path = typer.Option(
        None, help="A recipe to start from (default: recipes/adapt.yaml's settings)."
    ),
    format: str = typer.Option(None, help="The base's FIM format (default: detected from its tokenizer)."),
    lora: int = typer.Option(None, help="Train a LoRA adapter of this rank instead of every weight."),
    set_: list[str] = typer.Option([], "--set", help="SECTION.KEY=VALUE, e.g. --set train.max_steps=200."),
) -> None:
    """Adapt a code model to your repositories with the paper's objectives: held-out bits per byte
    before and after, the adapted model in Hugging Face and GGUF form, and a report."""
    import yaml

    from codemill.flow.run import run

    if not (base / "config.json").exists():
        raise UserError(
            f"{base} is not a checkpoint directory (no config.json); give the base model's folder"
        )
    given = load_recipe(recipe) if recipe else yaml.safe_load(ADAPT_DEFAULTS)
    given = {k: dict(v or {}) for k, v in given.items()}
    given.setdefault("run", {}).update(base=str(base.resolve()), sources=list(sources))
    if format:
        given.setdefault("data", {})["format"] = format
    if lora is not None:
        given.setdefault("train", {})["lora_rank"] = lora
    for key, value in parse_overrides(set_).items():
        section, dot, name = key.partition(".")
        if not dot or section not in ("run", "curate", "data", "train"):
            raise UserError(f"--set {key}: name the section, e.g. train.max_steps=200 or data.seq_len=512")
        given.setdefault(section, {})[name] = value
    _output(out)
    (out / "adapt.yaml").write_text(yaml.safe_dump(given, sort_keys=False))
    _stages_table("codemill adapt", run(out / "adapt.yaml", out, console))
    console.print(f"before and after: [bold]{out / 'adapt.json'}[/bold], {out / 'report.md'}")


# recipes/adapt.yaml without its example base and sources: what `codemill adapt` starts from
ADAPT_DEFAULTS = """
run: {holdout: 0.1, holdout_unit: auto, fim_per_type: 20, crossfile_per_repo: 10, suites: [fim-loss], loss_files: 100}
data: {seq_len: 512}
train: {max_steps: 200, warmup_steps: 20, global_batch: 8, micro_batch: 4, lr: 1.0e-4, min_lr: 1.0e-5,
        ckpt_every: 50, log_every: 5}
"""


@app.command("ablate")
def ablate_(
    recipe: Path = typer.Argument(..., help="A recipe; its data section is the base of every variant."),
    out: Path = typer.Option(Path("runs/ablate"), "--out", "-o", help="One directory per variant inside."),
    variants: str = typer.Option(
        None,
        help="Comma-separated variants (default: all): ntp, ntp-fim, paper, paper-random-order, paper-fim "
        "(SFIM replaced by FIM), paper-weighted-sfim, paper-sfim-anywhere, paper-repo-context (our options).",
    ),
    seeds: str = typer.Option(
        None,
        help="Comma-separated seeds (data and training): every variant at each, then means ± sd and "
        "paired differences with intervals (t over seeds, repositories resampled), verdicts and power.",
    ),
    shared: Path = typer.Option(None, help="Reuse the corpus, tokenizer and benchmarks in this directory."),
    generation_seeds: int = typer.Option(
        None, help="Run the generation suites at the first N seeds only (fim-loss runs at every seed)."
    ),
) -> None:
    """NTP vs NTP+FIM vs the paper's mix, and Algorithm 1 vs random order, at equal windows."""
    from codemill.flow.ablate import ablate

    try:
        seed_list = [int(x) for x in seeds.split(",")] if seeds else None
    except ValueError:
        raise UserError(f"--seeds {seeds!r}: give whole numbers separated by commas, e.g. 0,1,2") from None
    _output(out)
    path = ablate(
        recipe, out, console, variants.split(",") if variants else None, seed_list, shared, generation_seeds
    )
    console.print(path.read_text())


@export_app.command("gguf")
def export_gguf_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory (train's final/, or any HF Llama)."),
    out: Path = typer.Option(..., "--out", "-o", help="The .gguf file to write."),
    dtype: str = typer.Option("f16", help="f32, f16, bf16 or q8_0 (norms stay f32)."),
    format: str = typer.Option(None, help="Prompt format, if the checkpoint has no codemill.json."),
) -> None:
    """One GGUF file that llama.cpp, llama-server and Ollama load, tokenizing as codemill does."""
    from codemill.model.gguf import export_gguf

    _output(out, directory=False)
    info = export_gguf(checkpoint, out, dtype, format)
    n = info["context"]
    console.print(
        f"wrote [bold]{info['path']}[/bold] ({info['bytes'] / 1e6:.1f} MB, {dtype}, tokenizer pre-type "
        f"{info['tokenizer']}, format {info['format']}, trained window {n}); run it with "
        f"`llama-server -m {out} -c {n} -b {n // 2} -n 64` so /infill keeps the editor's context "
        "(docs/editors.md), without --spm-infill"
    )


@app.command("serve")
def serve_(
    model: Path = typer.Argument(..., help="A codemill or Hugging Face Llama-family checkpoint directory."),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to listen on (loopback unless you mean otherwise)."
    ),
    port: int = typer.Option(8012),
    api_key: str = typer.Option(None, help="Require `Authorization: Bearer KEY`."),
    format: str = typer.Option(None, help="Prompt format (default: the checkpoint's codemill.json)."),
    max_tokens: int = typer.Option(512, help="Server-side cap on new tokens per request."),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="Decode with a torch.compile'd one-token step (compiled while /health says loading).",
    ),
    access_log: bool = typer.Option(
        True, help="One line per request on stderr: client, path, status, ms, tokens."
    ),
    parallel: int = typer.Option(
        4,
        min=1,
        help="Slots: requests decoded together, each with its own KV cache (llama-server's -np).",
    ),
    dtype: str = typer.Option(
        None, help="fp32 or bf16 weights and cache (default: bf16 on a GPU, fp32 on a CPU)."
    ),
    lookup: bool = typer.Option(
        True,
        help="Fill the decode rows no request holds with prompt-lookup drafts, verified in the same "
        "step (greedy requests; several tokens a step, the same answers).",
    ),
    draft_rows: int = typer.Option(
        None,
        min=0,
        help="Decode rows beyond the slots, for drafts only: compute, no KV cache "
        "(default: as many as --parallel with --lookup, 0 without).",
    ),
    prefill_chunk: int = typer.Option(
        512,
        min=1,
        help="Prompt tokens evaluated per step, between the other requests' decode steps "
        "(llama-server's --ubatch-size): a long prompt delays them a chunk at a time.",
    ),
    cache_ram: int = typer.Option(
        8192,
        min=0,
        help="MiB of host memory for prompts the slots give up, copied back when a request shares "
        "more with one than with its slot (llama-server's --cache-ram; 0: off).",
    ),
) -> None:
    """Serve completions: OpenAI-compatible /v1/completions, llama-server's /infill and /completion."""
    from codemill.model.hf import check_checkpoint, hf_config
    from codemill.serve.engine import Engine
    from codemill.serve.server import listen, serve

    if not (model / "config.json").exists():
        raise UserError(f"{model} is not a checkpoint directory (no config.json)")
    check_checkpoint(model)  # config.json and the weights' headers: damage is said here, not as a 503
    hf_config(model)  # a model codemill runs
    sock = listen(host, port)
    console.print(
        f"serving {model.name} on http://{host}:{port} (/v1/completions, /infill, /completion, /v1/models, "
        "/health); "
        "/health answers 503 until the model is loaded"
    )
    load = functools.partial(Engine, model, format, compile=compile, parallel=parallel, dtype=dtype, lookup=lookup,
                             draft_rows=draft_rows, prefill_chunk=prefill_chunk, cache_ram_mib=cache_ram)  # fmt: skip
    serve(load, sock, api_key=api_key, max_tokens=max_tokens, access_log=access_log)


@app.command("complete")
def complete_(
    position: str = typer.Argument(..., help="FILE:LINE:COL, 1-based, the cursor."),
    model: Path = typer.Option(..., help="A codemill or Hugging Face Llama-family checkpoint directory."),
    max_tokens: int = typer.Option(64),
    format: str = typer.Option(None, help="Prompt format (default: the checkpoint's codemill.json)."),
) -> None:
    """Print the completion a model gives at a position in a file (the text before the cursor is the
    prefix, the text after it the suffix)."""
    from codemill.data.repo import lines_of
    from codemill.serve.engine import Engine

    path, _, rest = position.rpartition(":")
    path, _, line = path.rpartition(":")
    try:
        line_no, col = int(line), int(rest)
        with open(path, newline="") as f:  # the file as it is: CRLF stays CRLF
            text = f.read()
    except (ValueError, OSError) as e:
        raise UserError(f"{position!r}: give FILE:LINE:COL with an existing file ({e})") from e
    lines = lines_of(text)
    if not 1 <= line_no <= len(lines) + 1 or col < 1:
        raise UserError(f"line {line_no}, column {col} is outside {path} ({len(lines)} lines)")
    offset = sum(len(x) for x in lines[: line_no - 1]) + min(
        col - 1, len(lines[line_no - 1].rstrip("\r\n")) if line_no <= len(lines) else 0
    )
    engine = Engine(model, format)
    ids = engine.prompt(text[:offset], text[offset:], path=Path(path).name, max_tokens=max_tokens)
    sys.stdout.write(engine.complete(ids, max_tokens=max_tokens).text + "\n")


def _output(path: Path | None, directory: bool = True) -> None:
    """Fail before the work, not after it, on an output that cannot be written (a file where a
    folder is needed, a folder where a file is, a read-only place or /proc)."""
    if path is None:
        return
    if directory and path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; give a directory for this output (a new path is fine)")
    if not directory and path.is_dir():
        raise UserError(f"{path} is a directory; give a file name for this output")
    folder = path if directory else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(
            f"cannot write {path}: {folder} takes no new files ({e.strerror}); choose another place"
        ) from None


RESUMABLE = {"curate", "train", "run", "ablate", "adapt"}


def _reporting(command):
    """A UserError becomes its message and exit code 2; any other exception keeps its traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        except OSError as e:  # a full disk met outside the writers that name what they write
            if e.errno not in FULL:
                raise
            name = command.__name__.rstrip("_").replace("_", " ")
            what, where = (
                (Path(e.filename).name, e.filename) if e.filename else (f"the output of {name}", None)
            )
            where = where or kwargs.get("out") or Path.cwd()
            console.print(f"[red]error:[/red] {disk_full(what, where)}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            again = "; rerun the same command to resume: finished work is kept"
            console.print(f"interrupted{again if command.__name__.rstrip('_') in RESUMABLE else ''}")
            raise typer.Exit(130) from None

    return run


def _report_user_errors(group: typer.Typer) -> None:
    for info in group.registered_commands:
        info.callback = _reporting(info.callback)
    if group.registered_callback is not None and group.registered_callback.callback is not None:
        group.registered_callback.callback = _reporting(group.registered_callback.callback)
    for sub in group.registered_groups:
        _report_user_errors(sub.typer_instance)


_report_user_errors(app)

if __name__ == "__main__":
    app()
