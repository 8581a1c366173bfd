"""`codemill complete FILE:LINE:COL`: a position in a file as an editor gives it, completed."""

from __future__ import annotations

from pathlib import Path

from codemill.errors import UserError


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
