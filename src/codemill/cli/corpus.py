"""`codemill corpus`: a curated corpus's summary, drop examples and audit page (curate/report.py,
curate/audit.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from codemill.cli.shared import console
from codemill.errors import writable

corpus_app = typer.Typer(no_args_is_help=True, help="Inspect a curated corpus.")


@corpus_app.command("stats")
def corpus_stats(
    corpus: Path, examples: int = typer.Option(2, help="Dropped files shown per reason.")
) -> None:
    """Print a corpus's summary table and examples of each drop reason."""
    from codemill.flow.curate import print_corpus_stats

    print_corpus_stats(corpus, examples, console)


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

    writable(out, directory=False)
    res = audit(corpus, per_reason, out, seed)
    charts = ", ".join(str(c) for c in res.charts) or "none"
    console.print(
        f"audit of {len(res.drops)} drop reasons ({res.sampled_drops} files shown) and "
        f"{len(res.redactions)} PII tags ({res.sampled_redactions} redactions shown) written to "
        f"[bold]{res.page}[/bold]; charts: {charts}"
    )
