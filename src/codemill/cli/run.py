"""`codemill run`, `codemill adapt` and `codemill ablate`: the whole flow (flow/run.py,
flow/adapt.py, flow/ablate.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from codemill.cli.shared import console
from codemill.errors import writable
from codemill.flow.layout import RunLayout


def run_(
    recipe: Path = typer.Argument(..., help="A recipe: recipes/demo.yaml, recipes/small.yaml, ..."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/RECIPE-NAME)."),
) -> None:
    """The whole flow: curate, tokenizer, held-out benchmarks, train, eval, report. Rerun to resume:
    finished stages with unchanged settings are skipped."""
    from codemill.flow.run import prepare, run, stages_table

    out = prepare(recipe, out)
    console.print(stages_table("codemill run", run(recipe, out, console)))


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
    from codemill.flow.adapt import write_recipe
    from codemill.flow.run import run, stages_table

    path = write_recipe(base, sources, out, recipe, format, lora, set_)
    console.print(stages_table("codemill adapt", run(path, out, console)))
    layout = RunLayout(out)
    console.print(f"before and after: [bold]{layout.adapt_json}[/bold], {layout.report}")


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
    from codemill.flow.ablate import ablate, parse_seeds

    seed_list = parse_seeds(seeds)
    writable(out)
    path = ablate(
        recipe, out, console, variants.split(",") if variants else None, seed_list, shared, generation_seeds
    )
    console.print(path.read_text())
