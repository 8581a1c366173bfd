"""What the command modules share: the console and the arguments several commands take."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

console = Console() if sys.stdout.isatty() else Console(width=160)  # logs keep whole rows

CORPUS = typer.Argument(..., help="A curated corpus directory.")
TOKENIZER = typer.Option(..., help="tokenizer.json / tokenizer.model or its directory.")
DATA_RECIPE = typer.Option(None, help="YAML recipe; its `data:` section sets the options.")
DATA_SET = typer.Option([], "--set", help="Override a data setting, e.g. --set seq_len=4096.")
