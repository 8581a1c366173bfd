"""`codemill curate`: repositories into a corpus (flow/curate.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from codemill.cli.shared import console


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
    from codemill.flow.curate import curate_command

    slurm = {"slurm_partition": partition, "slurm_time": time, "slurm_cpus_per_task": cpus_per_task}
    curate_command(sources, out, recipe, set_, executor, slurm, dry_run, console)
