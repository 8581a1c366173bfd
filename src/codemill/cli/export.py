"""`codemill export gguf`: a checkpoint for llama.cpp and Ollama (model/gguf.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from codemill.cli.shared import console
from codemill.errors import writable

export_app = typer.Typer(
    no_args_is_help=True, help="Write a checkpoint for other runtimes (llama.cpp, Ollama)."
)


@export_app.command("gguf")
def export_gguf_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory (train's final/, or any HF Llama)."),
    out: Path = typer.Option(..., "--out", "-o", help="The .gguf file to write."),
    dtype: str = typer.Option("f16", help="f32, f16, bf16 or q8_0 (norms stay f32)."),
    format: str = typer.Option(None, help="Prompt format, if the checkpoint has no codemill.json."),
) -> None:
    """One GGUF file that llama.cpp, llama-server and Ollama load, tokenizing as codemill does."""
    from codemill.model.gguf import export_gguf

    writable(out, directory=False)
    info = export_gguf(checkpoint, out, dtype, format)
    n = info["context"]
    console.print(
        f"wrote [bold]{info['path']}[/bold] ({info['bytes'] / 1e6:.1f} MB, {dtype}, tokenizer pre-type "
        f"{info['tokenizer']}, format {info['format']}, trained window {n}); run it with "
        f"`llama-server -m {out} -c {n} -b {n // 2} -n 64` so /infill keeps the editor's context "
        "(docs/editors.md), without --spm-infill"
    )
