"""Tree-sitter syntax check: a file whose tree has an ERROR or MISSING node, or whose parse runs
past the time budget, does not parse. Grammars come from their PyPI wheels, never downloaded."""

from __future__ import annotations

import re
import time

from codemill.langs import ts_parser

# A declaration at a line start that C has no syntax for: such a header is C++, and the C grammar,
# slow on what it cannot read, is not tried (on the torch headers: 7.0 s of C parses that all failed).
CPP_DECLARATION = re.compile(
    r'^[ \t]*(?:namespace\b|template\s*<|class\s+\w|using\s+namespace\b|extern\s+"C\+\+")', re.M
)


def check_syntax(lang: str, path: str, text: str, timeout_s: float) -> str | None:
    """None when the file parses (or its language has no grammar), else the drop reason.

    A `.h` header may be C or C++: it passes if either grammar accepts it."""
    if lang == "C" and path.endswith(".h") and CPP_DECLARATION.search(text):
        return _parse("C++", text, timeout_s)
    reason = _parse(lang, text, timeout_s)
    if reason == "syntax_error" and lang == "C" and path.endswith(".h"):
        return _parse("C++", text, timeout_s)
    return reason


# py-tree-sitter 0.26 keeps a reference to every chunk a read callback returns (the source leaks),
# and only the callback form takes a progress callback (the time budget). Files below this size
# parse from bytes in well under the budget (~20 ms at 12 MB/s); larger ones keep the budget.
BUDGETED_BYTES = 256 << 10


def _parse(lang: str, text: str, timeout_s: float) -> str | None:
    parser = ts_parser(lang)
    if parser is None:
        return None
    src = text.encode("utf-8")
    if len(src) < BUDGETED_BYTES:
        tree = parser.parse(src)
        parser.reset()
        return "syntax_error" if tree.root_node.has_error else None
    deadline = time.monotonic() + timeout_s
    try:
        tree = parser.parse(
            lambda offset, _point: src[offset : offset + 65536],
            progress_callback=lambda *_: time.monotonic() > deadline,
        )
    except ValueError:  # the progress callback cancelled the parse
        return "parse_timeout"
    finally:
        parser.reset()
    return "syntax_error" if tree.root_node.has_error else None
