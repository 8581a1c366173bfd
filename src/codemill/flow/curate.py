"""The curate stage (`codemill curate`, and `codemill run`'s): sources into a corpus directory,
its summary table printed, an empty corpus an error."""

from __future__ import annotations

from pathlib import Path

from codemill.errors import UserError, writable
from codemill.flow.settings import section


def curate_corpus(sources: list[str], out: Path, cfg, console, executor: str = "local") -> dict:
    """Curate `sources` into `out`; return the manifest."""
    from codemill.curate.pipeline import curate, require_files
    from codemill.curate.report import summary

    manifest = curate(sources, out, cfg, executor=executor)
    console.print(summary(manifest))
    require_files(manifest, out)
    return manifest


def print_slurm_scripts(sources: list[str], out: Path, cfg, console) -> None:
    """`--executor slurm --dry-run`: each stage's batch script, submitted nowhere."""
    from codemill.curate.pipeline import slurm_scripts

    for name, script in slurm_scripts(sources, out, cfg):
        console.print(f"# ---- stage {name} ----", markup=False, highlight=False)
        console.print(script, markup=False, highlight=False, soft_wrap=True)


def curate_command(sources: list[str], out: Path, recipe: Path | None, overrides: list[str], executor: str,
                   slurm: dict, dry_run: bool, console) -> None:  # fmt: skip
    """`codemill curate`: the recipe's curate section, `--set` and the Slurm options given applied;
    with `--dry-run`, Slurm's batch scripts printed instead."""
    from codemill.config import parse_overrides
    from codemill.curate.config import CurateConfig

    given = parse_overrides(overrides) | {k: v for k, v in slurm.items() if v is not None}
    cfg = section(CurateConfig, recipe, given)
    if dry_run:
        if executor != "slurm":
            raise UserError("--dry-run prints the batch scripts of --executor slurm; add it")
        return print_slurm_scripts(sources, out, cfg, console)
    writable(out)
    manifest = curate_corpus(sources, out, cfg, console, executor)
    if manifest.get("already_complete"):
        console.print(f"{out} was already complete for these sources and settings: nothing to do")
        return
    console.print(
        f"corpus written to [bold]{out}[/bold]; `codemill corpus stats {out}` shows examples of every drop reason"
    )


def print_corpus_stats(corpus: Path, examples: int, console) -> None:
    """`codemill corpus stats`: the summary table and `examples` dropped files per reason."""
    from codemill.curate.report import print_stats

    if not (corpus / "manifest.json").exists():
        raise UserError(f"{corpus} has no manifest.json; run `codemill curate ... --out {corpus}` first")
    print_stats(corpus, examples, console)
