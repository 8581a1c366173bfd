"""The bench stage (`codemill bench build`, and `codemill run`'s): held-out benchmarks of the
published shapes built from a corpus, and the table of what they hold."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from codemill.curate.corpus import shards
from codemill.errors import UserError
from codemill.flow.layout import RunLayout


def build_fim(corpus: Path, out: Path, console, *, holdout: float, per_type: int, seed: int) -> None:
    """`codemill bench build fim`: FIM-Eval-shaped tasks, a table of them per language and task type."""
    from codemill.eval.builders import build_fim as build

    got = build(corpus, out, holdout=holdout, per_type=per_type, seed=seed)
    table = Table(title=f"FIM tasks from {got['repos']} held-out repositories")
    table.add_column("language / task type")
    table.add_column("tasks", justify="right")
    for k, n in got["tasks"].items():
        table.add_row(k, str(n))
    console.print(table)
    console.print(
        f"written to [bold]{out}[/bold]; evaluate with `codemill eval fim-eval --data {out} --model ...`"
    )


def build_crossfile(corpus: Path, out: Path, console, *, holdout: float, per_repo: int, seed: int) -> None:
    """`codemill bench build crossfile`: CrossCodeEval-shaped tasks, counted per language."""
    from codemill.eval.builders import build_crossfile as build

    got = build(corpus, out, holdout=holdout, per_repo=per_repo, seed=seed)
    console.print(
        f"{sum(got['tasks'].values())} tasks {got['tasks']} from {got['repos']} held-out repositories in [bold]{out}[/bold]"
    )
    console.print(
        f"evaluate with `codemill eval crosscodeeval --data {out} --setting infile|retrieval|oracle --model ...`"
    )


def build_heldout(rcfg, shared: RunLayout, console) -> None:
    """A run's benchmarks: cross-file, then FIM, holding out the same repositories (or files)."""
    from codemill.eval.builders import build_crossfile, build_fim

    unit = holdout_unit(rcfg, shared.corpus)
    try:
        cross = build_crossfile(shared.corpus, shared.crossfile_bench, holdout=rcfg.holdout,
                                per_repo=rcfg.crossfile_per_repo, unit=unit)  # fmt: skip
    except UserError as e:  # a small corpus may have no cross-file language: FIM tasks still measure
        console.print(f"[yellow]no cross-file benchmark:[/yellow] {e}")
        cross = {"repos": 0, "tasks": {}}
    fim = build_fim(
        shared.corpus, shared.fim_bench, holdout=rcfg.holdout, per_type=rcfg.fim_per_type, unit=unit
    )
    table = Table(
        title=f"held-out benchmarks ({fim['repos']} repositories for FIM, {cross['repos']} cross-file)"
    )
    for col in ("language", "task type", "tasks"):
        table.add_column(col, justify="right" if col == "tasks" else "left")
    for key, n in sorted(fim["tasks"].items()):
        table.add_row(*key.split("/", 1), str(n))
    for key, n in sorted(cross["tasks"].items()):
        table.add_row(key, "cross-file", str(n))
    console.print(table)


def holdout_unit(rcfg, corpus: Path) -> str:
    """Whole repositories when enough would be held out, else a keyed share of every repository's
    files (a team with one repository still gets a benchmark, and trains on the rest)."""
    if rcfg.holdout_unit not in ("auto", "repo", "file"):
        raise UserError(f"run.holdout_unit is {rcfg.holdout_unit!r}; use auto, repo or file")
    if rcfg.holdout_unit != "auto":
        return rcfg.holdout_unit
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    repos = set()
    for f in shards(corpus):
        repos |= set(pc.unique(pq.read_table(f, columns=["repo"]).column("repo")).to_pylist())
    return "repo" if len(repos) * rcfg.holdout >= rcfg.min_heldout_repos else "file"
