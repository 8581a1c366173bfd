"""`codemill serve` and `codemill complete`: a checkpoint answering editors (flow/serving.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from codemill.cli.shared import console


def serve_(
    model: Path = typer.Argument(..., help="A codemill or Hugging Face Llama-family checkpoint directory."),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to listen on (loopback unless you mean otherwise)."
    ),
    port: int = typer.Option(8012),
    api_key: str = typer.Option(None, help="Require `Authorization: Bearer KEY`."),
    format: str = typer.Option(None, help="Prompt format (default: the checkpoint's codemill.json)."),
    max_tokens: int = typer.Option(512, help="Server-side cap on new tokens per request."),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="Decode with a torch.compile'd one-token step (compiled while /health says loading).",
    ),
    access_log: bool = typer.Option(
        True, help="One line per request on stderr: client, path, status, ms, tokens."
    ),
    parallel: int = typer.Option(
        4,
        min=1,
        help="Slots: requests decoded together, each with its own KV cache (llama-server's -np).",
    ),
    dtype: str = typer.Option(
        None, help="fp32 or bf16 weights and cache (default: bf16 on a GPU, fp32 on a CPU)."
    ),
    lookup: bool = typer.Option(
        True,
        help="Fill the decode rows no request holds with prompt-lookup drafts, verified in the same "
        "step (greedy requests; several tokens a step, the same answers).",
    ),
    draft_rows: int = typer.Option(
        None,
        min=0,
        help="Decode rows beyond the slots, for drafts only: compute, no KV cache "
        "(default: as many as --parallel with --lookup, 0 without).",
    ),
    prefill_chunk: int = typer.Option(
        512,
        min=1,
        help="Prompt tokens evaluated per step, between the other requests' decode steps "
        "(llama-server's --ubatch-size): a long prompt delays them a chunk at a time.",
    ),
    cache_ram: int = typer.Option(
        8192,
        min=0,
        help="MiB of host memory for prompts the slots give up, copied back when a request shares "
        "more with one than with its slot (llama-server's --cache-ram; 0: off).",
    ),
) -> None:
    """Serve completions: OpenAI-compatible /v1/completions, llama-server's /infill and /completion."""
    from codemill.flow.serving import serve_checkpoint

    serve_checkpoint(model, host, port, console, format=format, api_key=api_key, max_tokens=max_tokens,
                     access_log=access_log, compile=compile, parallel=parallel, dtype=dtype, lookup=lookup,
                     draft_rows=draft_rows, prefill_chunk=prefill_chunk, cache_ram_mib=cache_ram)  # fmt: skip


def complete_(
    position: str = typer.Argument(..., help="FILE:LINE:COL, 1-based, the cursor."),
    model: Path = typer.Option(..., help="A codemill or Hugging Face Llama-family checkpoint directory."),
    max_tokens: int = typer.Option(64),
    format: str = typer.Option(None, help="Prompt format (default: the checkpoint's codemill.json)."),
) -> None:
    """Print the completion a model gives at a position in a file (the text before the cursor is the
    prefix, the text after it the suffix)."""
    from codemill.flow.serving import complete

    sys.stdout.write(complete(position, model, max_tokens, format) + "\n")
