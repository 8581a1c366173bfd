"""The language table: one row per language, shared by every stage.

Identification is by file name first, then by extension (lowercased), the way GitHub linguist and
go-enry do it; a `.h` header, which C, C++ and Objective-C share, is then told apart by its content
with linguist's heuristics (`detect(path, text)`). `kind` separates programming languages ("code") from
markup, data and prose, which curation counts and drops unless a recipe keeps them.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import cache

from codemill.errors import UserError


@dataclass(frozen=True)
class Lang:
    name: str
    extensions: tuple[str, ...]
    line_comment: str | None = None
    block_comment: tuple[str, str] | None = None
    kind: str = "code"  # code | markup | data | prose
    filenames: tuple[str, ...] = ()
    grammar: tuple[str, str] | None = None  # (python module, function returning the language pointer)


C_STYLE = ("//", ("/*", "*/"))
HASH = ("#", None)

LANGS: tuple[Lang, ...] = (
    Lang("Python", (".py", ".pyi", ".pyw"), *HASH, grammar=("tree_sitter_python", "language")),
    Lang("Java", (".java",), *C_STYLE, grammar=("tree_sitter_java", "language")),
    Lang(
        "JavaScript",
        (".js", ".mjs", ".cjs", ".jsx"),
        *C_STYLE,
        grammar=("tree_sitter_javascript", "language"),
    ),
    Lang(
        "TypeScript",
        (".ts", ".mts", ".cts"),
        *C_STYLE,
        grammar=("tree_sitter_typescript", "language_typescript"),
    ),
    Lang("TSX", (".tsx",), *C_STYLE, grammar=("tree_sitter_typescript", "language_tsx")),
    Lang("C", (".c", ".h"), *C_STYLE, grammar=("tree_sitter_c", "language")),
    Lang(
        "C++",
        (".cpp", ".cc", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h++", ".ipp", ".tpp", ".inl"),
        *C_STYLE,
        grammar=("tree_sitter_cpp", "language"),
    ),
    Lang("C#", (".cs",), *C_STYLE, grammar=("tree_sitter_c_sharp", "language")),
    Lang("Go", (".go",), *C_STYLE, grammar=("tree_sitter_go", "language")),
    Lang("Rust", (".rs",), *C_STYLE, grammar=("tree_sitter_rust", "language")),
    Lang("PHP", (".php", ".phtml"), *C_STYLE),
    Lang("Ruby", (".rb", ".rake", ".gemspec"), *HASH, filenames=("Rakefile", "Gemfile")),
    Lang("Kotlin", (".kt", ".kts"), *C_STYLE),
    Lang("Swift", (".swift",), *C_STYLE),
    Lang("Scala", (".scala", ".sc"), *C_STYLE),
    Lang("Objective-C", (".m", ".mm"), *C_STYLE),
    Lang("Dart", (".dart",), *C_STYLE),
    Lang("Shell", (".sh", ".bash", ".zsh", ".ksh"), *HASH),
    Lang("PowerShell", (".ps1", ".psm1", ".psd1"), "#", ("<#", "#>")),
    Lang("Batchfile", (".bat", ".cmd"), "REM"),
    Lang("Perl", (".pl", ".pm", ".t"), *HASH),
    Lang("Lua", (".lua",), "--", ("--[[", "]]")),
    Lang("R", (".r",), *HASH),
    Lang("Julia", (".jl",), "#", ("#=", "=#")),
    Lang("MATLAB", (".matlab",), "%", ("%{", "%}")),
    Lang("Haskell", (".hs", ".lhs"), "--", ("{-", "-}")),
    Lang("OCaml", (".ml", ".mli"), None, ("(*", "*)")),
    Lang("F#", (".fs", ".fsi", ".fsx"), "//", ("(*", "*)")),
    Lang("Elixir", (".ex", ".exs"), *HASH),
    Lang("Erlang", (".erl", ".hrl"), "%"),
    Lang("Clojure", (".clj", ".cljs", ".cljc", ".edn"), ";"),
    Lang("Common Lisp", (".lisp", ".lsp", ".cl"), ";", ("#|", "|#")),
    Lang("Scheme", (".scm", ".ss", ".rkt"), ";", ("#|", "|#")),
    Lang("Emacs Lisp", (".el",), ";"),
    Lang("Groovy", (".groovy", ".gradle", ".gvy"), *C_STYLE),
    Lang("Visual Basic .NET", (".vb",), "'"),
    Lang("Fortran", (".f", ".f90", ".f95", ".f03", ".for"), "!"),
    Lang("Pascal", (".pas", ".pp", ".dpr"), "//", ("{", "}")),
    Lang("Assembly", (".asm", ".s", ".nasm"), ";"),
    Lang("Zig", (".zig",), "//"),
    Lang("Nim", (".nim",), "#", ("#[", "]#")),
    Lang("Crystal", (".cr",), *HASH),
    Lang("D", (".d",), *C_STYLE),
    Lang("Verilog", (".v", ".sv", ".svh"), *C_STYLE),
    Lang("VHDL", (".vhd", ".vhdl"), "--"),
    Lang("Solidity", (".sol",), *C_STYLE),
    Lang("Cython", (".pyx", ".pxd", ".pxi"), *HASH),
    Lang("CUDA", (".cu", ".cuh"), *C_STYLE),
    Lang("SQL", (".sql",), "--", ("/*", "*/")),
    Lang("Tcl", (".tcl",), *HASH),
    Lang("AWK", (".awk",), *HASH),
    Lang("Makefile", (".mk", ".mak"), *HASH, filenames=("Makefile", "GNUmakefile", "makefile")),
    Lang("CMake", (".cmake",), *HASH, filenames=("CMakeLists.txt",)),
    Lang("Dockerfile", (".dockerfile",), *HASH, filenames=("Dockerfile", "Containerfile")),
    Lang("Vue", (".vue",), None, ("<!--", "-->")),
    Lang("Svelte", (".svelte",), None, ("<!--", "-->")),
    # markup, data and prose: counted, dropped unless a recipe keeps them
    Lang("HTML", (".html", ".htm", ".xhtml"), None, ("<!--", "-->"), kind="markup"),
    Lang("CSS", (".css", ".scss", ".sass", ".less"), None, ("/*", "*/"), kind="markup"),
    Lang("XML", (".xml", ".xsd", ".xsl", ".svg", ".plist"), None, ("<!--", "-->"), kind="data"),
    Lang("JSON", (".json", ".jsonl", ".geojson", ".ipynb"), kind="data"),
    Lang("YAML", (".yaml", ".yml"), "#", kind="data"),
    Lang("TOML", (".toml",), "#", kind="data"),
    Lang("INI", (".ini", ".cfg", ".conf", ".properties"), "#", kind="data"),
    Lang("CSV", (".csv", ".tsv"), kind="data"),
    Lang("Markdown", (".md", ".markdown"), None, ("<!--", "-->"), kind="prose"),
    Lang("reStructuredText", (".rst",), "..", kind="prose"),
    Lang("TeX", (".tex", ".sty", ".cls", ".bib"), "%", kind="prose"),
    Lang(
        "Text",
        (".txt", ".text"),
        kind="prose",
        filenames=("README", "CHANGES", "AUTHORS", "NEWS"),
    ),
)

BY_NAME: dict[str, Lang] = {lang.name: lang for lang in LANGS}

# How benchmarks name the table's languages, in their file names and fields: eval keys everything by
# the table's names and reads or writes these only at a benchmark's edge.
BENCHMARK_NAMES: dict[str, dict[str, str]] = {
    "fim-eval": {"Python": "python", "Java": "java", "JavaScript": "javascript", "C++": "cplus",
                 "TypeScript": "typescript"},  # TypeScript: codemill's addition
    "crosscodeeval": {"Python": "python", "Java": "java", "TypeScript": "typescript", "C#": "csharp"},
    "multipl-e": {"C++": "cpp", "Java": "java", "JavaScript": "js"},
    "santacoder-fim": {"Python": "py", "JavaScript": "js", "Java": "java"},
}  # fmt: skip
_COMMON = {"py": "Python", "js": "JavaScript", "ts": "TypeScript", "cpp": "C++", "c++": "C++", "cs": "C#"}


def lang_name(name: str, benchmark: str | None = None) -> str:
    """The table's name of a language as `benchmark` writes it, or as it is commonly abbreviated
    (py, js, ts, cpp, c++, cs), or in any case."""
    if benchmark is not None:
        for lang, alias in BENCHMARK_NAMES[benchmark].items():
            if alias == name:
                return lang
    folded = {k.lower(): k for k in BY_NAME}
    key = name.lower()
    if key in _COMMON or key in folded:
        return _COMMON.get(key) or folded[key]
    raise UserError(f"unknown language {name!r}" + (f" in {benchmark}" if benchmark else ""))


_BY_FILENAME: dict[str, Lang] = {f: lang for lang in LANGS for f in lang.filenames}
_BY_EXT: dict[str, Lang] = {e: lang for lang in LANGS for e in lang.extensions}


# GitHub linguist's rules for `.h` (lib/linguist/heuristics.yml, named patterns `objectivec` and
# `cpp`), tried in that order; a header neither matches is C. Ruby's `^` is a line start, hence re.M.
# Departures: `try` must open a block, `constexpr` be a word, `class X` be followed by a base, body,
# `;`, `<` or the line end, and `namespace` open a block or alias (linguist's patterns also take
# comment lines: "   try to port your code" in CPython's unicodeobject.h, "   namespace processing"
# in expat.h, and `trylock(...)`).
OBJC_HEADER = re.compile(
    r"^\s*(?:@(?:interface|class|protocol|property|end|synchronised|selector|implementation)\b"
    r"|#import\s+.+\.h[\">])",
    re.M,
)
CPP_HEADER = re.compile(
    r"^\s*#\s*include <(?:cstdint|string|vector|map|list|array|bitset|queue|stack|forward_list"
    r"|unordered_map|unordered_set|(?:i|o|io)stream)>"
    r"|^\s*template\s*<"
    r"|^[ \t]*(?:try\s*\{|constexpr\b)"
    r"|^[ \t]*catch\s*\("
    r"|^[ \t]*class[ \t]+(?:[A-Z][A-Z0-9_]*[ \t]+)?\w+(?:[ \t]+final)?[ \t]*(?:[:{;<]|$)"
    r"|^[ \t]*(?:using[ \t]+namespace[ \t]+[\w:]+[ \t]*;|namespace(?:[ \t]+[\w:]+)?[ \t]*[{=]|namespace[ \t]+[\w:]+[ \t]*\n[ \t]*\{)"
    r"|^[ \t]*(?:private|public|protected):$"
    r"|__has_cpp_attribute|__cplusplus >"
    r"|std::\w+",
    re.M,
)


def header_lang(text: str) -> str:
    """The language of a `.h` file's text: "Objective-C", "C++" or "C" (linguist's rules)."""
    if OBJC_HEADER.search(text):
        return "Objective-C"
    return "C++" if CPP_HEADER.search(text) else "C"


def detect(path: str, text: str | None = None) -> Lang | None:
    """Language of a repository path by file name, then extension; None if unknown. Given the
    file's text, a `.h` header is C, C++ or Objective-C by its content (`header_lang`)."""
    name = path.rpartition("/")[2]  # not PurePosixPath: detect runs on every file walked
    if name in _BY_FILENAME:
        return _BY_FILENAME[name]
    dot = name.rfind(".")
    if dot <= 0:
        return None
    ext = name[dot:].lower()
    if ext == ".h" and text is not None:
        return BY_NAME[header_lang(text)]
    return _BY_EXT.get(ext)


@cache
def ts_language(name: str):
    """The tree-sitter Language of a table row, from its grammar wheel; None if it has none."""
    lang = BY_NAME[name]
    if lang.grammar is None:
        return None
    import tree_sitter

    module, func = lang.grammar
    try:
        return tree_sitter.Language(getattr(importlib.import_module(module), func)())
    except ImportError:
        return None


@cache
def ts_parser(name: str):
    """A tree-sitter Parser for a table row (one per process and language); None without a grammar."""
    import tree_sitter

    language = ts_language(name)
    return tree_sitter.Parser(language) if language is not None else None


@dataclass(frozen=True)
class Structure:
    """What data needs from a grammar: function nodes (SFIM) and an import query (Algorithm 1).

    The query captures `@import` on the node naming what is imported; data/deps.py turns that
    text into repository paths per language.
    """

    functions: tuple[str, ...]
    imports: str


_JS_FUNCS = (
    "function_declaration",
    "generator_function_declaration",
    "function_expression",
    "arrow_function",
    "method_definition",
)
_JS_IMPORTS = """
(import_statement source: (string) @import)
(export_statement source: (string) @import)
(call_expression function: (identifier) @fn arguments: (arguments . (string) @import) (#eq? @fn "require"))
(call_expression function: (import) arguments: (arguments . (string) @import))
"""
_C_IMPORTS = "(preproc_include path: (_) @import)"

STRUCTURES: dict[str, Structure] = {
    "Python": Structure(
        ("function_definition",),
        "(import_statement) @import (import_from_statement) @import",
    ),
    "Java": Structure(("method_declaration", "constructor_declaration"), "(import_declaration) @import"),
    "JavaScript": Structure(_JS_FUNCS, _JS_IMPORTS),
    "TypeScript": Structure(_JS_FUNCS, _JS_IMPORTS),
    "TSX": Structure(_JS_FUNCS, _JS_IMPORTS),
    "C": Structure(("function_definition",), _C_IMPORTS),
    "C++": Structure(("function_definition",), _C_IMPORTS),
    "Go": Structure(
        ("function_declaration", "method_declaration", "func_literal"),
        "(import_spec path: (_) @import)",
    ),
    "Rust": Structure(
        ("function_item",),
        "(mod_item name: (identifier) @import !body) (use_declaration argument: (_) @import)",
    ),
    "C#": Structure(
        ("method_declaration", "constructor_declaration", "local_function_statement"),
        "(using_directive) @import",
    ),
}
