"""`codemill data`: the training stream inspected (data/preview.py, flow/stream_stats.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from codemill.cli.shared import CORPUS, DATA_RECIPE, DATA_SET, TOKENIZER, console
from codemill.flow.settings import training_stream

data_app = typer.Typer(
    no_args_is_help=True, help="The training stream: Algorithm 1, NTP / FIM / SFIM, packing."
)


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

    preview(training_stream(corpus, tokenizer, recipe, set_), console, docs, chars, repo)


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
    from codemill.flow.stream_stats import stream_stats

    stream_stats(corpus, tokenizer, recipe, set_, windows, json_out, console)
