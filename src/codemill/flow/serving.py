"""`codemill serve` and `codemill complete`: a checkpoint answering editors over HTTP, or once at a
position in a file given as an editor gives it."""

from __future__ import annotations

import functools
from pathlib import Path

from codemill.errors import UserError


def serve_checkpoint(model: Path, host: str, port: int, console, *, format: str | None, api_key: str | None,
                     max_tokens: int, access_log: bool, **engine) -> None:  # fmt: skip
    """Check the checkpoint whole, take the port, then load it (`engine`: serve.engine.Engine's
    settings) while /health says loading, and answer until stopped."""
    from codemill.model.hf import check_checkpoint, hf_config
    from codemill.serve.engine import Engine
    from codemill.serve.server import listen, serve

    if not (model / "config.json").exists():
        raise UserError(f"{model} is not a checkpoint directory (no config.json)")
    check_checkpoint(model)  # config.json and the weights' headers: damage is said here, not as a 503
    hf_config(model)  # a model codemill runs
    sock = listen(host, port)
    console.print(
        f"serving {model.name} on http://{host}:{port} (/v1/completions, /infill, /completion, /v1/models, "
        "/health); "
        "/health answers 503 until the model is loaded"
    )
    load = functools.partial(Engine, model, format, **engine)
    serve(load, sock, api_key=api_key, max_tokens=max_tokens, access_log=access_log)


def cursor(position: str) -> tuple[str, str, int]:
    """FILE:LINE:COL (1-based) as the file's path, its text and the cursor's offset in it; a column
    past the line's end is its end, and LINE may be the one after the last."""
    from codemill.data.repo import lines_of

    path, _, rest = position.rpartition(":")
    path, _, line = path.rpartition(":")
    try:
        line_no, col = int(line), int(rest)
        with open(path, newline="") as f:  # the file as it is: CRLF stays CRLF
            text = f.read()
    except (ValueError, OSError) as e:
        raise UserError(f"{position!r}: give FILE:LINE:COL with an existing file ({e})") from e
    lines = lines_of(text)
    if not 1 <= line_no <= len(lines) + 1 or col < 1:
        raise UserError(f"line {line_no}, column {col} is outside {path} ({len(lines)} lines)")
    offset = sum(len(x) for x in lines[: line_no - 1]) + min(
        col - 1, len(lines[line_no - 1].rstrip("\r\n")) if line_no <= len(lines) else 0
    )
    return path, text, offset


def complete(position: str, model: Path, max_tokens: int, format: str | None) -> str:
    """The completion `model` gives at `position`: the text before it the prefix, after it the suffix."""
    from codemill.serve.engine import Engine

    path, text, offset = cursor(position)
    engine = Engine(model, format)
    ids = engine.prompt(text[:offset], text[offset:], path=Path(path).name, max_tokens=max_tokens)
    return engine.complete(ids, max_tokens=max_tokens).text
