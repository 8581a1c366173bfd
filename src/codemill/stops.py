"""The syntax-aware stop, shared by the server (`syntax_stop: true` on `/infill` and
`/v1/completions`) and eval (`--syntax-stop`): what SFIM trains a model for, stopping where the
completion closes a syntactic unit. Completion logic, so not in langs.py's language table."""

from __future__ import annotations

from collections.abc import Callable

from codemill.langs import detect, ts_parser

_CONTAINERS = {
    "module",
    "program",
    "translation_unit",
    "source_file",
    "compilation_unit",
    "block",
    "compound_statement",
    "statement_block",
    "class_body",
    "declaration_list",
    "field_declaration_list",
}


def syntax_stop(prefix: str, suffix: str, path: str | None) -> Callable[[str], int] | None:
    """The syntax-aware stop (what SFIM trains for): a function of the growing completion that
    returns the first line end at which prefix + completion + suffix parses without errors and the
    statement the completion starts with ends inside it, whole (so `for x in xs:` stops neither by
    taking the suffix's lines as its body nor with an empty one), or -1. Line ends are tried once each, so it is called as the
    text grows. None when the path's language has no grammar."""
    lang = detect(path) if path else None
    parser = ts_parser(lang.name) if lang is not None and lang.grammar else None
    if parser is None:
        return None
    checked, base = 0, len(prefix.encode())

    def closed(root, start: int, end: int) -> bool:
        """The statement starting at `start` ends by `end` and has no empty body (tree-sitter
        accepts `for x in xs:` with an empty block before a dedented line)."""
        node = root.named_descendant_for_byte_range(start, start)
        while (
            node.parent is not None
            and node.parent.start_byte == start
            and node.parent.type not in _CONTAINERS
        ):
            node = node.parent
        if node.end_byte > end:
            return False
        stack = [node]
        while stack:
            n = stack.pop()
            if n.is_named and n.start_byte == n.end_byte:
                return False
            stack.extend(n.children)
        return True

    def cut(text: str) -> int:
        nonlocal checked
        while (nl := text.find("\n", checked)) != -1:
            checked = nl + 1
            middle = text[:checked]
            if not middle.strip():
                continue
            root = parser.parse((prefix + middle + suffix).encode()).root_node
            lead = len(middle) - len(middle.lstrip())
            start = base + len(middle[:lead].encode())
            if not root.has_error and closed(root, start, base + len(middle.encode())):
                return checked
        return -1

    return cut
