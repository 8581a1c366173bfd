"""`codemill tokenizer train`: a BPE for code (flow/tokenizer.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from codemill.cli.shared import CORPUS, console
from codemill.data.tokenizer import DEFAULT_PRETOKENIZER
from codemill.flow.tokenizer import tokenizer_command
from codemill.formats import DEFAULT_FORMAT

tokenizer_app = typer.Typer(no_args_is_help=True, help="Train a tokenizer for code.")


@tokenizer_app.command("train")
def tokenizer_train(
    corpus: Path = CORPUS,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for tokenizer.json and its config."),
    vocab_size: int = typer.Option(49152, help="Ids in all, special tokens included (49,152 for the 7B)."),
    format: str = typer.Option(DEFAULT_FORMAT, help="Format whose special tokens the vocabulary reserves."),
    max_bytes: int = typer.Option(1 << 30, help="Train on at most this much text (1 GB: the notes' advice)."),
    pretokenizer: str = typer.Option(
        DEFAULT_PRETOKENIZER,
        help="How text is split before merging: qwen2, llama3, starcoder, deepseek-coder (llama.cpp "
        "runs these exactly) or codemill (ours; no GGUF export).",
    ),
) -> None:
    """Train a byte-level BPE for code on a corpus (a pre-tokenizer llama.cpp implements exactly)."""
    tokenizer_command(corpus, out, vocab_size=vocab_size, max_bytes=max_bytes, format=format,
                      pretokenizer=pretokenizer, console=console)  # fmt: skip
