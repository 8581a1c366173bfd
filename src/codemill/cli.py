"""The `codemill` command: one group per stage of DESIGN.md's flow, no logic of its own."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
import yaml
from rich.console import Console

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Build code-completion models the aiXcoder way."
)
corpus_app = typer.Typer(no_args_is_help=True, help="Inspect a curated corpus.")
app.add_typer(corpus_app, name="corpus")
console = Console() if sys.stdout.isatty() else Console(width=160)  # logs keep whole rows


def _config(recipe: Path | None, overrides: list[str]):
    from codemill.curate.config import CurateConfig

    d = {}
    if recipe:
        d = (yaml.safe_load(recipe.read_text()) or {}).get("curate", {}) or {}
    for item in overrides:
        key, _, value = item.partition("=")
        d[key] = yaml.safe_load(value)
    return CurateConfig.from_dict(d)


@app.command()
def curate(
    sources: list[str] = typer.Argument(
        ..., help="Directories, git repositories, archives, Stack-style .parquet/.jsonl, or 'installed'."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Corpus directory (rerun the same command to resume)."),
    recipe: Path = typer.Option(None, help="YAML recipe; its `curate:` section sets the options."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting, e.g. --set tasks=8."),
    executor: str = typer.Option("local", help="datatrove executor: local or ray."),
) -> None:
    """Curate repositories into a corpus (paper §II)."""
    from codemill.curate.pipeline import curate as run
    from codemill.curate.report import summary

    try:
        cfg = _config(recipe, set_)
        manifest = run(sources, out, cfg, executor=executor)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    console.print(summary(manifest))
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


if __name__ == "__main__":
    app()
