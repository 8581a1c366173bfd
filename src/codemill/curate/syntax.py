"""Tree-sitter syntax check. The paper drops files that "fail to parse or time out"; how "fail" is
read depends on the language. Grammars come from their PyPI wheels, never downloaded.

- Python, Java, JavaScript, Go, Rust, ...: literally, a tree with any ERROR or MISSING node fails.
- C and C++: tree-sitter parses without a preprocessor, so export and attribute macros (`C10_API`,
  `ARROW_EXPORT`, `PyAPI_FUNC(int)`), statement macros and `#ifdef __cplusplus` braces put ERROR and
  MISSING nodes into most well-formed files (read literally, 65% of real C/C++ files fail; the
  audit of issue 29 found 62% of C/C++ files lost). A C/C++ file fails when its braces, parentheses or
  brackets do not balance (what truncation and a lost brace do) or when more than
  MAX_ERROR_SHARE of its bytes lie under ERROR nodes, in its text and in its text with macros of
  those shapes and macro definitions blanked out (`error_share`, `blank_macros`), or when it holds a
  generator's `${...}` placeholder outside comments and strings. `max_error_share=None` keeps the
  literal reading.
- A `.h` header is C, C++ or Objective-C by its content (`langs.header_lang`, linguist's rules).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

from codemill.langs import header_lang, ts_parser

# Measured on 1,648 well-formed real C/C++ files: 400 sampled from each of torch/include/c10 (all
# 231), torch/include/ATen, pyarrow/include and Python's include dir (all 189), numpy/_core/include
# (all 28), and 400 other .c/.cpp/.cc/.h/.hpp files in site-packages (torchgen's `${...}` templates
# left out); each also planted 3 ways: cut inside a function body (1,129), a line opening with `}`
# losing it (1,018), 3 characters of a statement line replaced by brackets and operators (1,129).
# Language by `detect(path, text)`. "kept": well-formed files that pass; "recall": planted ones
# that fail. The check before issue 29 (any error node, `.h` also tried as C++) kept 0.350.
#   MAX_ERROR_SHARE  0      0.001  0.005  0.01   0.02   0.05   None (literal)
#   kept             0.848  0.877  0.913  0.938  0.959  0.978  0.351
#   recall           0.982  0.944  0.922  0.916  0.912  0.908  0.992
# At 0.01: truncated 0.997, brace 0.996, garbled 0.762 caught; kept per source: ATen 0.99, c10 0.92,
# numpy 0.89, pyarrow 0.93, Python 0.94, others 0.90. Delimiter balance alone passes all but 4 of
# the well-formed files and catches 99% of truncations and lost braces; the share catches garbled
# lines that keep brackets balanced. C/C++ syntax-check CPU: 3.0 s -> 4.1 s on these 13 MB.
# Then the labelled set (benchmarks/curate_labels) still lost 20 of 127 well-formed C/C++ files, to
# shapes blanked since: K&R `OF((...))`, capitals-only macros (XMLCALL, ZEXPORT), an export call on
# the line before its declarator, `#define` bodies, `#if` blocks without `#else` inside initializers,
# statement macros, `const NOEXCEPT`, `__vector`, explicit instantiations, `};` closing extern "C",
# and comment lines that linguist's `.h` patterns read as C++. Lost: 20 -> 0 of 127. On 1,000 other
# real C/C++ files (site-packages and /usr/include, seeded sample; planted: 597 cuts in a body, 899
# lost `}`, 926 lines with 3 characters garbled): kept 0.946 -> 0.976, caught 0.899 -> 0.896
# (garbled 0.738 -> 0.728); at 0.005 the same blanking keeps 0.966 and catches 0.905.
MAX_ERROR_SHARE = 0.01

TOLERANT = ("C", "C++")


def check_syntax(
    lang: str, path: str, text: str, timeout_s: float, max_error_share: float | None = MAX_ERROR_SHARE
) -> str | None:
    """None when the file parses (or its language has no grammar), else the drop reason
    ("syntax_error" or "parse_timeout"). `max_error_share` applies to C and C++; None: any error
    node fails, as the paper reads literally.

    A `.h` file recorded as C is parsed as what its content says it is (`header_lang`); one that
    says C and fails as C passes if it parses as C++ (headers are often written for both)."""
    if lang == "C" and path.endswith(".h"):
        lang = header_lang(text)
        if lang == "C":
            reason = _check("C", text, timeout_s, max_error_share)
            if reason == "syntax_error":
                return _check("C++", text, timeout_s, max_error_share)
            return reason
    return _check(lang, text, timeout_s, max_error_share)


def _check(lang: str, text: str, timeout_s: float, max_error_share: float | None) -> str | None:
    if lang in TOLERANT and max_error_share is not None:
        code = _NOT_CODE.sub("", text)
        if _balanced(code) and "${" not in code:  # `${name}`: a generator's template, not C/C++ yet
            return _check_share(lang, text, timeout_s, max_error_share)
    src = text.encode("utf-8")
    tree = _parse(lang, src, timeout_s)
    if tree is None or isinstance(tree, str):
        return tree
    return "syntax_error" if tree.root_node.has_error else None


def _check_share(lang: str, text: str, timeout_s: float, max_error_share: float) -> str | None:
    """A balanced C/C++ text passes when at most max_error_share of its bytes, or of its bytes with
    macros blanked, lie under ERROR nodes. The blanked text is parsed first: of the 3,021 balanced
    installed C/C++ files, 2,591 have macros to blank and 2,440 of these pass blanked (the text itself
    is parsed for the other 151), and a blanked text parses cheaper (fewer errors to recover from) by
    more than blanking costs: the C/C++ check's CPU is 0.85x that of parsing the text first. A parse
    that times out decides the file."""
    blanked = blank_macros(text)
    for candidate in (blanked, text) if blanked != text else (text,):
        src = candidate.encode("utf-8")
        tree = _parse(lang, src, timeout_s)
        if tree is None or isinstance(tree, str):
            return tree
        if error_share(tree, len(src)) <= max_error_share:
            return None
    return "syntax_error"


def error_share(tree, n_bytes: int) -> float:
    """Bytes under ERROR nodes over the file's bytes. MISSING nodes are zero-width (the parser
    assumed a token that was not there) and add nothing; a missing `}` or `)` is the balance
    check's. Only subtrees that hold an error are walked."""
    total, stack = 0, [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error:
            total += node.end_byte - node.start_byte
            continue
        stack.extend(c for c in node.children if c.has_error)
    return total / max(1, n_bytes)


# Comments, string and character literals (raw strings too): removed before delimiters are counted.
_NOT_CODE = re.compile(
    r"//[^\n]*|/\*.*?\*/|R\"([^()\\\s]{0,16})\(.*?\)\1\"|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'",
    re.S,
)


def balanced(text: str) -> bool:
    """Whether braces, parentheses and brackets outside comments and literals are as many opened as
    closed. Preprocessor branches count as they stand: of 1,647 real C/C++ files, 4 do not balance."""
    return _balanced(_NOT_CODE.sub("", text))


def _balanced(code: str) -> bool:
    return (
        code.count("{") == code.count("}")
        and code.count("(") == code.count(")")
        and code.count("[") == code.count("]")
    )


# Macro shapes tree-sitter cannot read, blanked with spaces (offsets and lines kept). A macro name is
# ALL_CAPS with an underscore (C10_API, ARROW_EXPORT) or four or more capitals (XMLCALL, ZEXPORT,
# XMLPUBFUN, CONSTCD14).
# A pattern that opens with `\b`, `^` or a lookbehind is tried at every position of the text; one
# that opens with a character or a set of them only where one stands. So the patterns below open with
# one and check what comes before it with a lookbehind after it (`c(?<!\wc)onst` is `\bconst`), and
# the line patterns open with "\n" in place of `^` (`_line_matches`): blanking took half the time.
# Indentation (`[ \t]*+`) is never backtracked into, as nothing after it may be a blank, and a
# lookahead (`(?=\w++\()`) rules out a line before the alternatives are tried: 0.7x once more.
_MACRO_TAIL = r"(?:[A-Z0-9]*_[A-Z0-9_]*|[A-Z0-9]{3,})"
_MACRO = rf"[A-Z]{_MACRO_TAIL}"
# one before a declaration or an attribute (`class ARROW_EXPORT [[nodiscard]] Status`), not on
# preprocessor lines;
_ATTR_MACRO = re.compile(rf"[A-Z](?<!\w[A-Z]){_MACRO_TAIL}\b(?=[ \t\n]+[A-Za-z_~\[])")
# one between a declarator and its `;` or body: `operator+=(const months& m) NOEXCEPT;`,
# `year() const NOEXCEPT;`;
# the `)` or `const` is matched, not looked behind at (a lookbehind is tried at every position), and
# kept; the lookahead forbids a macro after a match, so no match starts inside the one before
_AFTER_DECLARATOR = re.compile(
    rf"(?:\)|c(?<!\wc)onst)(?=[ \t]+[A-Z])([ \t]+{_MACRO}(?:\([^;{{}}()\n]*\))?)(?=[ \t\n]*[;{{]|[ \t]+const\b)"
)
# calls that precede a declaration on its line: PyAPI_FUNC(int) f(void); Py_DEPRECATED(3.7) ...
# (a call whose argument is a type keeps the type), or a macro call on the line before it
# (`XMLPARSEAPI(void)` / `XML_ParserFree(XML_Parser parser);`);
_LEADING_CALLS = re.compile(
    rf"\n([ \t]*+)(?=\w++\()((?:\w+\([^()\n]*\)[ \t]+)+|{_MACRO}\([^()\n]*\)[ \t]*\n[ \t]*)(?=[A-Za-z_])"
)
_CALL = re.compile(r"(\w+)\(([^()\n]*)\)")
_TYPE_ARG = re.compile(r"^[\w \t*&:<>,]+$")
# an attribute call between a declarator and its `;`: f(x) Py_GCC_ATTRIBUTE((format(printf, 1, 0)));
_TRAILING_ATTR = re.compile(r"(?<=\))([ \t\n]+\w+\(\([^;{}]*?\)\))(?=[ \t\n]*;)")
# a K&R prototype wrapper: `deflateInit OF((z_streamp strm, int level));` keeps `(...)`;
_PROTOTYPE_WRAPPER = re.compile(r"([ \t](?<=\w[ \t])[ \t]*\w+\()(\([^;{}]*?\))(\))(?=[ \t\n]*;)")
# a compiler's extension keyword before a type or name (`__vector unsigned int`, `__extension__ int`);
_EXTENSION = re.compile(r"_(?<!\w_)_[a-z]\w*(?=[ \t]+[A-Za-z_])")
# an explicit template instantiation (`extern template class X<Loop>;`), which the grammar lacks;
_INSTANTIATION = re.compile(r"\n[ \t]*+(?:extern[ \t]+)?template(?=[ \t]+[A-Za-z_])")
# the `extern "C" {` ... `}` pair under `#ifdef __cplusplus`, which tree-sitter sees as unbalanced;
_EXTERN_C = re.compile(
    r"\n([ \t]*#[ \t]*if(?:def[ \t]+__cplusplus|[ \t]+defined[ \t]*\(?[ \t]*__cplusplus\)?)[^\n]*\n)"
    r"([ \t]*(?:extern[ \t]+\"C\"[ \t]*\{|\};?)[ \t]*)(?=\n[ \t]*#[ \t]*endif)"
)
# macro definitions (with their continuation lines): no compiler reads them as C until expanded;
_DEFINE = re.compile(r"\n[ \t]*#[ \t]*(?:define|undef)\b(?:[^\n]*\\\n)*[^\n]*")
# a macro call that is a statement or declaration of its own (`ARROW_ASSIGN_OR_RAISE(auto t, F(x));`,
# `DEFINE_CAST(uint16_t, UInt16)`): its name at a line start, parentheses closed on a later line or
# this one, then only `;` to the line end;
_MACRO_CALL_START = re.compile(rf"\n[ \t]*+{_MACRO}\(")
# conditional directives: a block without `#else`/`#elif` is blanked to its contents (what the
# compiler reads when the condition holds; preprocessor lines inside initializer lists and enums
# are errors to tree-sitter); a block with branches stays.
_CONDITIONAL = re.compile(r"\n[ \t]*+#[ \t]*+(if|ifdef|ifndef|elif|elifdef|elifndef|else|endif)\b")
_PAREN = re.compile(r"[()]")
_NOT_NEWLINE = re.compile(r"[^\n]")


def _spaces(s: str) -> str:
    return _NOT_NEWLINE.sub(" ", s) if "\n" in s else " " * len(s)


def _leading_calls(m: re.Match) -> str:
    def one(call: re.Match) -> str:
        name, args = call.group(1), call.group(2)
        if _TYPE_ARG.match(args) and not args.strip().isdigit():
            return " " * (len(name) + 1) + args + " "
        return " " * len(call.group(0))

    return m.group(1) + _CALL.sub(one, m.group(2))


def _blank_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Spans (in order of their starts) blanked; where two overlap (a statement macro inside another
    macro's arguments on a later line), their union, so the text keeps its length."""
    if not spans:
        return text
    parts, pos = [], 0
    for a, b in spans:
        a = max(a, pos)
        if b > a:
            parts += [text[pos:a], _spaces(text[a:b])]
            pos = b
    return "".join(parts) + text[pos:]


def _line_matches(pattern: re.Pattern, src: str) -> Iterator[re.Match]:
    """`finditer` of a `^`-anchored multiline pattern, for one written with "\\n" in place of `^` and
    a text with a newline prepended (`src`); the line a match stands for starts at m.start() + 1. The
    regex engine tries `^` at every position but a leading "\\n" only at newlines (a third of the
    blanking's time). A match may end with the newline the next line's match opens with, as `^` sees
    it; so the search goes on from the match's last character."""
    pos = 0
    while m := pattern.search(src, pos):
        yield m
        pos = max(m.end() - 1, m.start() + 1)


def _line_sub(pattern: re.Pattern, repl: Callable[[re.Match], str], src: str) -> str:
    """`sub` of a `^`-anchored pattern written as for `_line_matches`: repl gives the text of the
    line's match (what follows the "\\n")."""
    parts, pos = [], 0
    for m in _line_matches(pattern, src):
        parts += [src[pos : m.start() + 1], repl(m)]
        pos = m.end()
    return "".join(parts) + src[pos:] if parts else src


def _macro_statements(src: str) -> list[tuple[int, int]]:
    """Spans of macro calls that stand alone as a statement or declaration (see _MACRO_CALL_START)."""
    spans = []
    for m in _line_matches(_MACRO_CALL_START, src):
        depth, i = 1, len(src)
        for paren in _PAREN.finditer(src, m.end()):
            depth += 1 if paren.group() == "(" else -1
            if not depth:
                i = paren.end()
                break
        end = src.find("\n", i)
        end = len(src) if end < 0 else end
        if depth == 0 and src[i:end].strip() in ("", ";"):
            spans.append((m.start() + 1, end))
    return spans


def _unbranched_conditionals(src: str) -> list[tuple[int, int]]:
    """Spans of the `#if...` and `#endif` lines of conditional blocks without `#else`/`#elif`."""
    spans, stack = [], []
    for m in _line_matches(_CONDITIONAL, src):
        end = src.find("\n", m.start() + 1)
        line = (m.start() + 1, len(src) if end < 0 else end)
        kind = m.group(1)
        if kind.startswith("if"):
            stack.append([line, False])
        elif kind == "endif":
            if stack:
                start, branched = stack.pop()
                if not branched:
                    spans += [start, line]
        elif stack:
            stack[-1][1] = True
    return sorted(spans)


def blank_macros(text: str) -> str:
    """The text with the macro shapes and directives above replaced by spaces (same lines, same
    length). A pattern whose literal part is not in the text is not run: a pattern that opens with a
    lookbehind is tried at every position, and these were a third of the C/C++ check's own time.
    The work is done on the text with a newline prepended, for the line patterns (`_line_matches`)."""
    src = "\n" + text
    if "__cplusplus" in src:
        src = _line_sub(_EXTERN_C, lambda m: m.group(1) + _spaces(m.group(2)), src)
    if "define" in src or "undef" in src:
        src = _blank_spans(src, [(m.start() + 1, m.end()) for m in _line_matches(_DEFINE, src)])
    src = _blank_spans(src, _unbranched_conditionals(src))
    src = _line_sub(_LEADING_CALLS, _leading_calls, src)
    src = _blank_spans(src, _macro_statements(src))

    def attr(m: re.Match) -> str:
        line_start = src.rfind("\n", 0, m.start()) + 1
        return m.group(0) if src[line_start : m.start()].lstrip().startswith("#") else " " * len(m.group(0))

    src = _ATTR_MACRO.sub(attr, src)
    src = _AFTER_DECLARATOR.sub(lambda m: m.group(0)[: m.start(1) - m.start()] + _spaces(m.group(1)), src)
    if "((" in src:
        src = _TRAILING_ATTR.sub(lambda m: _spaces(m.group(1)), src)
        src = _PROTOTYPE_WRAPPER.sub(lambda m: _spaces(m.group(1)) + m.group(2) + " ", src)
    if "__" in src:
        src = _EXTENSION.sub(lambda m: _spaces(m.group(0)), src)
    if "template" in src:
        src = _blank_spans(src, [(m.start() + 1, m.end()) for m in _line_matches(_INSTANTIATION, src)])
    return src[1:]


# py-tree-sitter 0.26 keeps a reference to every chunk a read callback returns (the source leaks),
# and only the callback form takes a progress callback (the time budget). Files below this size
# parse from bytes in well under the budget (~20 ms at 12 MB/s); larger ones keep the budget.
BUDGETED_BYTES = 256 << 10


def _parse(lang: str, src: bytes, timeout_s: float):
    """The tree of UTF-8 source, None without a grammar, or "parse_timeout"."""
    parser = ts_parser(lang)
    if parser is None:
        return None
    if len(src) < BUDGETED_BYTES:
        tree = parser.parse(src)
        parser.reset()
        return tree
    deadline = time.monotonic() + timeout_s
    try:
        return parser.parse(
            lambda offset, _point: src[offset : offset + 65536],
            progress_callback=lambda *_: time.monotonic() > deadline,
        )
    except ValueError:  # the progress callback cancelled the parse
        return "parse_timeout"
    finally:
        parser.reset()
