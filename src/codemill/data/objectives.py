"""The three training objectives, applied to one file in text space (paper §III-C).

NTP keeps the file whole. FIM cuts it at two uniform random character positions (bigcode's rule).
SFIM follows the paper: pick a function, parse it, pick a non-root non-leaf node of its tree, and
take a span inside the node whose start is random and whose end is a line end.

Read literally the rule picks mostly tiny expression nodes, so node choice is a policy:
- "literal" (default, the paper's rule): uniform over the function's non-root non-leaf nodes that
  contain a line end;
- "weighted" (ours, a named option): the same nodes weighted by kind, statements and blocks above expressions,
  with probability `start_at_node` the span starts where the node starts, as in the paper's
  Figure 3 (`if i % 5 == 0:` is an SPM middle that opens an if-statement), and with probability
  `end_at_node` it ends at the node's last line end, so a quarter of middles are whole nodes
  (the README's "pick a complete node").
The middle never includes the line end; the suffix starts with it. A line ends where its
terminator starts: at the `\n`, or at the `\r` of a CRLF pair, so a CRLF file has the same candidate
nodes and spans as its LF twin and a middle never ends between `\r` and `\n`.
"""

from __future__ import annotations

import bisect
import random
import re
from dataclasses import dataclass
from enum import IntEnum

import tree_sitter

from codemill.data.repo import SourceFile
from codemill.errors import UserError
from codemill.langs import STRUCTURES, ts_language


class Objective(IntEnum):
    """What a token is trained for: the per-token code the packed stream carries, the row of the
    training loop's per-objective sums. PADDING (0) carries no loss."""

    PADDING = 0
    NTP = 1
    FIM = 2
    SFIM = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def of(cls, label: str) -> Objective:
        return cls[label.upper()]


OBJECTIVES = tuple(o.label for o in Objective if o)  # the objectives a recipe draws: ntp, fim, sfim
_NEWLINE = re.compile(b"\r?\n")  # a match starts where its line ends
_BLOCKS = {
    "block",
    "suite",
    "compound_statement",
    "statement_block",
    "declaration_list",
    "field_declaration_list",
}


@dataclass
class Sample:
    objective: str  # ntp | fim | sfim
    prefix: str
    middle: str | None = None
    suffix: str | None = None
    spm: bool = False
    fallback: str | None = None  # why SFIM could not be applied to this file
    node: str | None = None  # the SFIM node type


@dataclass(frozen=True)
class SfimPolicy:
    """How SFIM picks its span; built by `DataConfig.sfim`, which holds the defaults and their reasons."""

    policy: str  # weighted | literal
    weights: tuple[tuple[str, float], ...]
    start_at_node: float
    end_at_node: float
    # function: the paper's rule (a function first); anywhere (ours): where no function has a node
    # (module-level code, data tables, a piece of a file cut at context level), any node of the code
    scope: str

    def choose(self, nodes: list, rng: random.Random):
        """literal: uniform over nodes; weighted: a kind by its weight among the kinds present, then
        uniform within it (uniform over nodes would still be dominated by expressions)."""
        if self.policy == "literal":
            return rng.choice(nodes)
        by_kind: dict[str, list] = {}
        for n in nodes:
            by_kind.setdefault(node_kind(n.type), []).append(n)
        kinds = [k for k, _ in self.weights if k in by_kind]
        weights = [w for k, w in self.weights if k in by_kind]
        if sum(weights) <= 0:
            return rng.choice(nodes)
        return rng.choice(by_kind[rng.choices(kinds, weights)[0]])


def node_kind(node_type: str) -> str:
    """statement | block | expression, from the grammar's node name (the grammars share conventions)."""
    if node_type in _BLOCKS or node_type.endswith(("_block", "_body")):
        return "block"
    if node_type.endswith(("statement", "_declaration", "_definition", "_clause", "_item", "_spec")):
        return "statement"
    return "expression"


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:a], text[a:b], text[b:]


_functions: dict[str, tree_sitter.Query | None] = {}


def function_query(lang: str) -> tree_sitter.Query | None:
    """The tree-sitter query that captures a language's functions (SFIM's and the FIM benchmarks' unit)."""
    if lang not in _functions:
        s, language = STRUCTURES.get(lang), ts_language(lang)
        pattern = "[" + " ".join(f"({t})" for t in s.functions) + "] @f" if s else None
        _functions[lang] = tree_sitter.Query(language, pattern) if s and language else None
    return _functions[lang]


def _newlines(src: bytes, start: int, end: int) -> list[int]:
    """Where the lines that end in [start, end] end: a terminator (LF or CRLF) starting there."""
    return [m.start() for m in _NEWLINE.finditer(src, start, end + 2)]


def _line_ends(newlines: list[int], size: int, start: int, end: int) -> list[int]:
    """Byte offsets p in (start, end] where a line ends: a newline, or the end of the file."""
    ends = newlines[bisect.bisect_right(newlines, start) : bisect.bisect_right(newlines, end)]
    return [*ends, end] if end == size and end > start else ends


@dataclass(frozen=True)
class Span:
    """An SFIM middle as byte offsets, with the node it was drawn from."""

    start: int
    end: int
    node: str
    node_start: int
    node_end: int


def _inner_nodes(top: tree_sitter.Node, src: bytes, lo: int, hi: int) -> list[tree_sitter.Node]:
    """Non-leaf nodes under `top` (not itself), inside [lo, hi), that hold a line end."""
    newlines = _newlines(src, top.start_byte, top.end_byte)
    overlaps = lambda n: n.child_count and n.start_byte < hi and n.end_byte > lo  # noqa: E731
    nodes, stack = [], [c for c in top.children if overlaps(c)]
    while stack:
        node = stack.pop()
        inside = lo <= node.start_byte and node.end_byte <= hi
        if inside and node.type != "ERROR" and _line_ends(newlines, len(src), node.start_byte, node.end_byte):
            nodes.append(node)
        stack += [c for c in node.children if overlaps(c)]
    return nodes


def sfim_span(
    file: SourceFile,
    rng: random.Random,
    policy: SfimPolicy,
    within: tuple[int, int] | None = None,
    tree: tree_sitter.Tree | None = None,
) -> Span | str:
    """The SFIM middle of a file, or the reason SFIM does not apply to it. `within` (bytes lo, hi): a
    piece of the file packed at context level, whose function is one of those overlapping the piece
    (the first, in random order, with a node inside it) and whose node lies inside it."""
    query = function_query(file.lang)
    tree = tree or (file.tree() if query is not None else None)
    if query is None or tree is None:
        return "no_grammar"
    src = file.src
    lo, hi = within or (0, len(src))
    functions = tree_sitter.QueryCursor(query).captures(tree.root_node).get("f", [])
    functions = [f for f in functions if f.start_byte < hi and f.end_byte > lo]
    order = sorted(functions, key=lambda n: n.start_byte)
    reason, nodes = "no_function" if not functions else "no_node", []
    for fn in [rng.choice(order)] if within is None and order else rng.sample(order, len(order)):
        if nodes := _inner_nodes(fn, src, lo, hi):
            break
    if not nodes and policy.scope == "anywhere":  # ours: any node of the code in range
        nodes = _inner_nodes(tree.root_node, src, lo, hi)
    if not nodes:
        return reason
    node = policy.choose(nodes, rng)
    newlines = _newlines(src, node.start_byte, node.end_byte)
    ends = _line_ends(newlines, len(src), node.start_byte, node.end_byte)
    weighted = policy.policy == "weighted"
    end = ends[-1] if weighted and rng.random() < policy.end_at_node else rng.choice(ends)
    if weighted and rng.random() < policy.start_at_node:
        start = node.start_byte
    else:
        start = rng.randrange(node.start_byte, end)
        while start < end and src[start] & 0xC0 == 0x80:  # not inside a UTF-8 character
            start += 1
    return Span(start, end, node.type, node.start_byte, node.end_byte)


def make_sample(
    file: SourceFile,
    objective: str,
    rng: random.Random,
    *,
    fim_spm: float,
    sfim_spm: float,
    policy: SfimPolicy,
    fallback: str = "fim",
    within: tuple[int, int] | None = None,
    tree: tree_sitter.Tree | None = None,
) -> Sample:
    """Apply `objective` to a file, or with `within` (characters a, b) to the piece text[a:b] alone;
    SFIM falls back to `fallback` (counted) when it cannot apply. `tree`: the file's, if parsed."""
    reason = None
    a, b = within or (0, len(file.text))
    text = file.text if within is None else file.text[a:b]
    if objective == "sfim":
        # the piece in bytes (chars are bytes in ASCII files, the common case)
        if within is None:
            lo, hi = 0, len(file.src)
        else:
            lo, hi = (a, b) if file.is_ascii else (len(file.text[:a].encode()), len(file.text[:b].encode()))
        span = sfim_span(file, rng, policy, within and (lo, hi), tree)
        if isinstance(span, Span):
            src = file.src
            pre, mid, suf = (
                src[lo : span.start].decode(),
                src[span.start : span.end].decode(),
                src[span.end : hi].decode(),
            )
            return Sample("sfim", pre, mid, suf, rng.random() < sfim_spm, node=span.node)
        reason, objective = span, fallback
    if objective == "fim":
        pre, mid, suf = fim_split(text, rng)
        return Sample("fim", pre, mid, suf, rng.random() < fim_spm, fallback=reason)
    if objective == "ntp":
        return Sample("ntp", text, fallback=reason)
    raise UserError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
