"""CodeBLEU (Ren et al. 2020) as CodeXGLUE defines it and aiXcoder's FIM-Eval computes it.

Written here because the `codebleu` package pins tree-sitter < 0.23 and codemill parses with 0.26.
The four terms and their quirks follow the reference (CodeXGLUE `calc_code_bleu.py`, as packaged by
k4black/codebleu 0.7.0) so that scores are equal on the pairs in tests/data/codebleu_reference.jsonl:

- n-gram match: corpus BLEU-4 over the tokens, brevity penalty, 0.1 added to zero counts. The
  reference splits on whitespace by default; aiXcoder's FIM-Eval (`run_evaluate.py` @bd3771e) passes
  its copy of sacrebleu's 13a tokenizer (`tokens_13a`) for this term and the next, so `ValueError:`
  is two tokens and an identical prediction of four tokens or more scores 1;
- weighted n-gram match: the same with *recall* against the reference and keywords weighing 1,
  other unigrams 0.2; its brevity penalty takes every reference to be 2 tokens long (the reference
  measures the [tokens, weights] pair), so it only applies to predictions of 1 or 2 tokens;
- syntax match: the share of the reference's subtrees (S-expressions of nodes with children) that
  occur in the candidate's tree, after comments and docstrings are removed;
- data-flow match: the share of the reference's normalized def-use edges found in the candidate's.
  C++ uses the C# rules on a C++ tree, as the reference does (only assignments, ifs and loops then
  yield edges).

`dataflow="codebleu"` (default, FIM-Eval's) replaces a data-flow score of 0 by 1: a sample without
def-use edges, or with none matched, gets full credit for the term. `dataflow="codexglue"` keeps 0.
The reference merges parent lists through Python sets, so its normalization varies with the hash
seed when a merged edge has two new parents; here they are sorted, which equals the reference on
every seed-stable pair.
"""

from __future__ import annotations

import functools
import io
import math
import re
import tokenize
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from codemill.errors import UserError
from codemill.langs import lang_name, ts_parser

KEYWORDS = {
    "Python": """False None True and as assert async await break class continue def del elif else except
        finally for from global if import in is lambda nonlocal not or pass raise return try while with
        yield match case type""",
    "Java": """abstract assert boolean break byte case catch char class const continue default do double
        else enum extends final finally float for goto if implements import instanceof int interface long
        native new package private protected public return short static strictfp super switch
        synchronized this throw throws transient try void volatile while""",
    "JavaScript": """await break case catch class const continue debugger default delete do else enum export
        extends false finally for function if implements import in instanceof interface let new null
        package private protected public return super switch static this throw try True typeof var void
        while with yield""",
    "C++": """auto const double float int short struct unsigned break continue else for long signed switch
        void case default enum goto register sizeof typedef volatile char do extern if return static union
        while asm dynamic_cast namespace reinterpret_cast bool explicit new static_cast typeid catch false
        try operator template typename class friend private this using const_cast inline public throw
        virtual delete mutable protected true wchar_t and bitand compl not_eq or_eq xor_eq and_eq bitor not
        or xor cin endl INT_MIN iomanip main npos std cout include INT_MAX iostream MAX_RAND NULL string""",
}  # the reference's keyword lists, quirks included (JavaScript's "True", C++'s library names)
KEYWORDS = {k: frozenset(v.split()) for k, v in KEYWORDS.items()}
LANGUAGES = frozenset(KEYWORDS)  # langs.py's names of the languages CodeBLEU is defined for


def lang_key(language: str) -> str:
    """langs.py's name of a language CodeBLEU is defined for, however it is spelled: the table's name,
    a common abbreviation (cpp) or the reference's own key (python, javascript), as `lang_name` reads them."""
    try:
        name = lang_name(language)
    except UserError:
        name = language
    if name not in LANGUAGES:
        raise UserError(f"CodeBLEU is defined here for {', '.join(KEYWORDS)}; got {language!r}")
    return name


def code_bleu(
    references: list[str],
    predictions: list[str],
    language: str,
    weights: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25),
    dataflow: str = "codebleu",
    tokenizer: Callable[[str], list[str]] = str.split,
) -> dict[str, float]:
    """Corpus CodeBLEU in [0, 1] with its four terms; one pair gives a per-sample score. `tokenizer`
    splits code for the n-gram terms: `str.split` as CodeXGLUE and the codebleu package,
    `tokens_13a` as aiXcoder's FIM-Eval."""
    key = lang_key(language)
    refs = [r.strip() for r in references]
    hyps = [p.strip() for p in predictions]
    refs_clean = [_strip_comments(r, key) for r in refs]
    hyps_clean = [_strip_comments(h, key) for h in hyps]
    syntax = _syntax_match(refs_clean, hyps_clean, key)
    flow = _dataflow_match(refs_clean, hyps_clean, key)
    terms = {
        **ngram_terms(refs, hyps, key, tokenizer),
        "syntax_match": syntax,
        "dataflow_match": flow,
    }
    return {"codebleu": combine(terms, weights, dataflow), **terms}


def combine(terms: dict[str, float], weights=(0.25, 0.25, 0.25, 0.25), dataflow: str = "codebleu") -> float:
    """The weighted sum of the four terms under a data-flow convention (see the module docstring)."""
    if dataflow not in ("codebleu", "codexglue"):
        raise UserError("dataflow must be 'codebleu' (no data flow scores 1) or 'codexglue' (scores 0)")
    flow = terms["dataflow_match"]
    a, b, c, d = weights
    return (
        a * terms["ngram_match"]
        + b * terms["weighted_ngram_match"]
        + c * terms["syntax_match"]
        + d * ((flow or 1.0) if dataflow == "codebleu" else flow)
    )


# ---- n-gram terms -------------------------------------------------------------------------------


def tokens_13a(code: str) -> list[str]:
    """sacrebleu's 13a tokens (mteval-v13a: punctuation split off, `-\\n` joined), as aiXcoder's copy
    of the tokenizer returns them."""
    return _tokenizer_13a()(code).split()


@functools.cache
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def ngram_terms(
    references: list[str], predictions: list[str], key: str, tokenizer: Callable[[str], list[str]] = str.split
) -> dict[str, float]:
    """The two n-gram terms of CodeBLEU over `tokenizer`'s tokens of the stripped code (`key`: the
    language's name in langs.py, for its keywords)."""
    ref_tokens = [tokenizer(r.strip()) for r in references]
    hyp_tokens = [tokenizer(p.strip()) for p in predictions]
    return {
        "ngram_match": _bleu(ref_tokens, hyp_tokens, weighted=None),
        "weighted_ngram_match": _bleu(ref_tokens, hyp_tokens, weighted=KEYWORDS[key]),
    }


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _bleu(refs: list[list[str]], hyps: list[list[str]], weighted: frozenset | None) -> float:
    """BLEU-4 over the corpus; with `weighted` (keywords) the unigram term is a keyword-weighted
    recall and higher orders are recall too, as in the reference's weighted n-gram match."""
    num, den = Counter(), Counter()
    hyp_len = ref_len = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        for n in range(1, 5):
            h, r = _ngrams(hyp, n), _ngrams(ref, n)
            if weighted is None:  # modified precision
                num[n] += sum(min(c, r[g]) for g, c in h.items())
                den[n] += max(1, sum(h.values()))
            else:
                clipped = {g: min(c, h[g]) for g, c in r.items()}
                w = (lambda g: 1.0 if g[0] in weighted else 0.2) if n == 1 else (lambda g: 1)
                num[n] += sum(c * w(g) for g, c in clipped.items())
                den[n] += max(1, sum(c * w(g) for g, c in r.items()))
        hyp_len += len(hyp)
        ref_len += len(ref) if weighted is None else 2  # the reference measures its [tokens, weights] pair
    if num[1] == 0:
        return 0.0
    bp = 1.0 if hyp_len > ref_len else 0.0 if hyp_len == 0 else math.exp(1 - ref_len / hyp_len)
    logs = [math.log((num[n] or 0.1) / den[n]) for n in range(1, 5)]
    return bp * math.exp(math.fsum(0.25 * x for x in logs))


# ---- comments -----------------------------------------------------------------------------------

_C_COMMENT = re.compile(r'//.*?$|/\*.*?\*/|\'(?:\\.|[^\\\'])*\'|"(?:\\.|[^\\"])*"', re.DOTALL | re.MULTILINE)


def _strip_comments(code: str, key: str) -> str:
    """Comments (and Python docstrings) removed, blank lines dropped; the text unchanged where Python
    cannot tokenize it (a fragment), as in the reference."""
    if key != "Python":
        text = _C_COMMENT.sub(lambda m: " " if m.group(0).startswith("/") else m.group(0), code)
        return "\n".join(x for x in text.split("\n") if x.strip())
    out, prev, last_line, last_col = [], tokenize.INDENT, -1, 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            (line, col), (end_line, end_col) = tok.start, tok.end
            if line > last_line:
                last_col = 0
            if col > last_col:
                out.append(" " * (col - last_col))
            docstring = tok.type == tokenize.STRING and (
                prev in (tokenize.INDENT, tokenize.NEWLINE) or col == 0
            )
            if tok.type != tokenize.COMMENT and not docstring:
                out.append(tok.string)
            prev, last_col, last_line = tok.type, end_col, end_line
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return code
    return "\n".join(x for x in "".join(out).split("\n") if x.strip())


# ---- syntax match -------------------------------------------------------------------------------


def _subtrees(root) -> list[str]:
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        found.append(str(node))
        stack.extend(c for c in node.children if c.children)
    return found


def _syntax_match(refs: list[str], hyps: list[str], key: str) -> float:
    parser = ts_parser(key)
    matched = total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        cand = set(_subtrees(parser.parse(hyp.encode()).root_node))
        subtrees = _subtrees(parser.parse(ref.encode()).root_node)
        matched += sum(s in cand for s in subtrees)
        total += len(subtrees)
    return matched / total if total else 0.0


# ---- data-flow match ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowRules:
    """Node types that define, assign and branch, per the reference's rules for a language."""

    assignment: tuple[str, ...]
    definition: tuple[str, ...] = ()
    increment: tuple[str, ...] = ()
    branch: tuple[str, ...] = ("if_statement", "else")
    counted_loop: tuple[str, ...] = ()  # C-style for: the update and body visited again
    loop_init: str = ""  # the declaration child after which a counted loop is revisited
    each_loop: tuple[str, ...] = ()  # for x in xs: visited twice
    while_loop: tuple[str, ...] = ("while_statement",)
    first: tuple[str, ...] = ()  # children visited before their siblings (comprehension clauses)


FLOW = {
    "Python": FlowRules(
        ("assignment", "augmented_assignment", "for_in_clause"),
        ("default_parameter",),
        branch=("if_statement",),
        each_loop=("for_statement",),
        first=("for_in_clause",),
    ),
    "Java": FlowRules(
        ("assignment_expression",),
        ("variable_declarator",),
        ("update_expression",),
        counted_loop=("for_statement",),
        loop_init="local_variable_declaration",
        each_loop=("enhanced_for_statement",),
    ),
    "JavaScript": FlowRules(
        ("assignment_pattern", "augmented_assignment_expression"),
        ("variable_declarator",),
        ("update_expression",),
        counted_loop=("for_statement",),
        loop_init="variable_declaration",
    ),
    "C++": FlowRules(  # the reference's C# rules
        ("assignment_expression",),
        ("variable_declarator",),
        ("postfix_unary_expression",),
        counted_loop=("for_statement",),
        loop_init="local_variable_declaration",
        each_loop=("for_each_statement",),
    ),
}
_TOKEN_TYPES = ("string_literal", "string", "character_literal")


def _is_token(node) -> bool:
    return (not node.children or node.type in _TOKEN_TYPES) and node.type != "comment"


class _Flow:
    """The reference's def-use walk: edges (name, token index, relation, parent names, parent indices)."""

    def __init__(self, source: str, key: str):
        self.key, self.rules = key, FLOW[key]
        lines = source.split("\n")
        self.tree = ts_parser(key).parse(source.encode()).root_node
        self.tokens: dict = {}
        for i, node in enumerate(self._token_nodes(self.tree)):
            (r0, c0), (r1, c1) = node.start_point, node.end_point
            text = (
                lines[r0][c0:c1]
                if r0 == r1
                else lines[r0][c0:] + "".join(lines[r0 + 1 : r1]) + lines[r1][:c1]
            )
            self.tokens[(node.start_point, node.end_point)] = (i, text)

    def _token_nodes(self, node) -> list:
        return [node] if _is_token(node) else [t for c in node.children for t in self._token_nodes(c)]

    def _variables(self, node) -> list[tuple[int, str]]:
        return [
            self.tokens[(t.start_point, t.end_point)]
            for t in self._token_nodes(node)
            if t.type != self.tokens[(t.start_point, t.end_point)][1]
        ]

    def walk(self, node, states: dict) -> tuple[list, dict]:
        r, states = self.rules, dict(states)
        kind = node.type
        if _is_token(node):
            idx, code = self.tokens[(node.start_point, node.end_point)]
            if kind == code:
                return [], states
            if code in states:
                return [(code, idx, "comesFrom", [code], list(states[code]))], states
            if kind == "identifier":
                states[code] = [idx]
            return [(code, idx, "comesFrom", [], [])], states
        if kind in r.definition:
            return self._definition(node, states)
        if kind in r.assignment:
            return (self._py_assignment if self.key == "Python" else self._assignment)(node, states)
        if kind in r.increment:
            names = self._variables(node)
            edges = _define(names, names, "computedFrom", states)
            return _by_index(edges), states
        if kind in r.branch:
            return self._branch(node, states)
        if kind in r.counted_loop:
            edges = []
            for child in node.children:
                e, states = self.walk(child, states)
                edges += e
            seen_init = False
            for child in node.children:
                if seen_init:
                    e, states = self.walk(child, states)
                    edges += e
                elif child.type == r.loop_init:
                    seen_init = True
            return _merge_loop(edges), states
        if kind in r.each_loop:
            return self._each_loop(node, states)
        if kind in r.while_loop:
            edges = []
            for _ in range(2):
                for child in node.children:
                    e, states = self.walk(child, states)
                    edges += e
            return _merge_loop(edges), states
        edges = []
        ordered = [c for c in node.children if c.type in r.first] + [
            c for c in node.children if c.type not in r.first
        ]
        for child in ordered:
            e, states = self.walk(child, states)
            edges += e
        return _by_index(edges), states

    def _definition(self, node, states):
        if self.key == "C++":  # the C# rule: positional name and value
            name, value = node.children[0], node.children[1] if len(node.children) == 2 else None
        else:
            name, value = node.child_by_field_name("name"), node.child_by_field_name("value")
        edges = []
        if value is None:
            for idx, code in self._variables(name):
                edges.append((code, idx, "comesFrom", [], []))
                states[code] = [idx]
            return _by_index(edges), states
        values = self._variables(value)
        edges, states = self.walk(value, states)
        edges += _define(self._variables(name), values, "comesFrom", states)
        return _by_index(edges), states

    def _assignment(self, node, states):
        left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
        edges, states = self.walk(right, states)
        edges += _define(self._variables(left), self._variables(right), "computedFrom", states)
        return _by_index(edges), states

    def _pairs(self, node):
        """Python's targets and values, element-wise where both sides have as many parts."""
        left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
        lefts = [x for x in left.children if x.type != ","]
        rights = [x for x in right.children if x.type != ","]
        if len(rights) != len(lefts):
            lefts, rights = [left], [right]
        return lefts or [left], rights or [right]

    def _bind(self, lefts, rights, edges, states):
        for ln, rn in zip(lefts, rights, strict=False):
            values = self._variables(rn)
            for i1, c1 in self._variables(ln):
                edges.append((c1, i1, "computedFrom", [c for _, c in values], [i for i, _ in values]))
                states[c1] = [i1]

    def _py_assignment(self, node, states):
        if node.type == "for_in_clause":
            lefts, rights = [node.child_by_field_name("left")], [node.children[-1]]
        elif node.child_by_field_name("right") is None:
            return [], states
        else:
            lefts, rights = self._pairs(node)
        edges = []
        for rn in rights:
            e, states = self.walk(rn, states)
            edges += e
        self._bind(lefts, rights, edges, states)
        return _by_index(edges), states

    def _each_loop(self, node, states):
        edges = []
        for _ in range(2):
            if self.key == "Python":
                lefts, rights = self._pairs(node)
                for rn in rights:
                    e, states = self.walk(rn, states)
                    edges += e
                self._bind(lefts, rights, edges, states)
                if node.children[-1].type == "block":
                    e, states = self.walk(node.children[-1], states)
                    edges += e
                continue
            fields = ("left", "right") if self.key == "C++" else ("name", "value")
            name, value = (node.child_by_field_name(f) for f in fields)
            e, states = self.walk(value, states)
            edges += e
            edges += _define(self._variables(name), self._variables(value), "computedFrom", states)
            e, states = self.walk(node.child_by_field_name("body"), states)
            edges += e
        return _merge_loop(edges), states

    def _branch(self, node, states):
        python = self.key == "Python"
        edges, current, others = [], dict(states), []
        has_else = "else" in node.type
        in_else = False
        for child in node.children:
            has_else = has_else or "else" in child.type
            alternative = (
                child.type in ("elif_clause", "else_clause") if python else child.type in self.rules.branch
            )
            if not alternative and not in_else:
                e, current = self.walk(child, current)
                edges += e
            else:
                in_else = not python
                e, new = self.walk(child, states)
                edges += e
                others.append(new)
        others.append(current)
        if not has_else:
            others.append(states)
        if self.key == "JavaScript":  # the reference's JavaScript rule also keeps the states before the if
            others.append(states)
        merged: dict = {}
        for d in others:
            for k, v in d.items():
                merged[k] = merged.get(k, []) + list(v)
        return _by_index(edges), {k: sorted(set(v)) for k, v in merged.items()}


def _define(names: list, values: list, relation: str, states: dict) -> list:
    """Each defined name gets one edge per value it takes from, and becomes its own latest definition."""
    edges = []
    for i1, c1 in names:
        edges += [(c1, i1, relation, [c2], [i2]) for i2, c2 in values]
        states[c1] = [i1]
    return edges


def _by_index(edges: list) -> list:
    return sorted(edges, key=lambda e: e[1])


def _merge_loop(edges: list) -> list:
    """A loop's two passes give the same token twice: one edge with the union of its parents."""
    merged: dict = {}
    for name, idx, rel, parents, parent_idx in edges:
        if (name, idx, rel) not in merged:
            merged[(name, idx, rel)] = [parents, parent_idx]
        else:
            old = merged[(name, idx, rel)]
            merged[(name, idx, rel)] = [sorted(set(old[0] + parents)), sorted(set(old[1] + parent_idx))]
    return [(k[0], k[1], k[2], v[0], v[1]) for k, v in sorted(merged.items(), key=lambda t: t[0][1])]


def data_flow(source: str, key: str) -> list[tuple]:
    """The reference's data-flow graph: edges touching a use-def link, merged per token."""
    try:
        flow = _Flow(source, key)
        edges, _ = flow.walk(flow.tree, {})
    except (KeyError, AttributeError, IndexError, RecursionError):
        edges = []
    edges = _by_index(edges)
    linked = {e[1] for e in edges if e[4]} | {i for e in edges for i in e[4]}
    merged: dict = {}
    for e in edges:
        if e[1] not in linked:
            continue
        if e[1] in merged:
            old = merged[e[1]]
            e = (e[0], e[1], e[2], sorted(set(old[3] + e[3])), sorted(set(old[4] + e[4])))
        merged[e[1]] = e
    return list(merged.values())


def _normalize(edges: list[tuple]) -> list[tuple]:
    names: dict[str, str] = {}
    out = []
    for name, _, rel, parents, _ in edges:
        for p in [*parents, name]:
            names.setdefault(p, f"var_{len(names)}")
        out.append((names[name], rel, [names[p] for p in parents]))
    return out


def _dataflow_match(refs: list[str], hyps: list[str], key: str) -> float:
    matched = total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        cand = _normalize(data_flow(hyp, key))
        for edge in _normalize(data_flow(ref, key)):
            total += 1
            if edge in cand:
                matched += 1
                cand.remove(edge)
    return matched / total if total else 0.0
