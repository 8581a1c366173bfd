"""`codemill bench build fim|crossfile`: held-out benchmarks (flow/bench.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from codemill.cli.shared import CORPUS, console
from codemill.errors import writable

bench_app = typer.Typer(no_args_is_help=True, help="Build benchmarks from held-out repositories.")
bench_build_app = typer.Typer(no_args_is_help=True, help="Build a benchmark of a published shape.")
bench_app.add_typer(bench_build_app, name="build")


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
    from codemill.flow.bench import build_fim

    writable(out)
    build_fim(corpus, out, console, holdout=holdout, per_type=per_type, seed=seed)


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
    from codemill.flow.bench import build_crossfile

    writable(out)
    build_crossfile(corpus, out, console, holdout=holdout, per_repo=per_repo, seed=seed)
