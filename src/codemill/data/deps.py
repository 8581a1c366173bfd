"""Inter-file dependencies of a repository: imports found by tree-sitter queries, resolved to files.

The paper orders by a "call graph"; what a parser can see reliably without building the project is
the import graph, which is what DeepSeek-Coder uses too. Imports that name no file of the repository
(the standard library, third-party packages) are dropped.
"""

from __future__ import annotations

import heapq
import posixpath
import random
from collections import defaultdict

import tree_sitter

from codemill.data.repo import SourceFile
from codemill.langs import STRUCTURES, ts_language

_queries: dict[str, tree_sitter.Query] = {}


def _imports_query(lang: str) -> tree_sitter.Query | None:
    if lang not in _queries:
        structure, language = STRUCTURES.get(lang), ts_language(lang)
        _queries[lang] = tree_sitter.Query(language, structure.imports) if structure and language else None
    return _queries[lang]


class PathIndex:
    """Repository paths by every suffix of their components, and files by directory suffix."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self.exact = {p: i for i, p in enumerate(paths)}
        self.by_suffix: dict[str, list[int]] = defaultdict(list)
        self.by_dir: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(paths):
            parts = p.split("/")
            for k in range(len(parts)):
                self.by_suffix["/".join(parts[k:])].append(i)
            for k in range(len(parts) - 1):
                self.by_dir["/".join(parts[k:-1])].append(i)

    def first(self, candidates: list[str], near: str) -> list[int]:
        """Files matching the first candidate path suffix that matches any; the one nearest `near` wins."""
        for c in candidates:
            c = posixpath.normpath(c).lstrip("/")
            if c in self.exact:
                return [self.exact[c]]
            if hits := self.by_suffix.get(c):
                return [min(hits, key=lambda i: -_common_prefix(self.paths[i], near))]
        return []

    def directory(self, d: str) -> list[int]:
        return list(self.by_dir.get(posixpath.normpath(d).strip("/"), []))


def _common_prefix(a: str, b: str) -> int:
    return len(posixpath.commonprefix([a.split("/"), b.split("/")]))


def _strip_quotes(s: str) -> str:
    return s.strip().strip("\"'`<>")


def _python(node: tree_sitter.Node, path: str, index: PathIndex) -> list[int]:
    here = posixpath.dirname(path)
    if node.type == "import_statement":
        names = [n.child_by_field_name("name") or n for n in node.children_by_field_name("name")]
        mods, level = [n.text.decode() for n in names], 0
        base = ""
    else:
        module = node.child_by_field_name("module_name")
        text = module.text.decode() if module else ""
        level = len(text) - len(text.lstrip("."))
        base = text[level:]
        subs = [n.child_by_field_name("name") or n for n in node.children_by_field_name("name")]
        mods = [f"{base}.{n.text.decode()}".strip(".") for n in subs] + [base]
    found = []
    for mod in mods:
        rel = mod.replace(".", "/")
        if level:
            root = here
            for _ in range(level - 1):
                root = posixpath.dirname(root)
            rel = posixpath.join(root, rel) if rel else root
            cands = [rel + ".py", rel + "/__init__.py"]
            found += [index.exact[c] for c in map(posixpath.normpath, cands) if c in index.exact][:1]
        elif rel:
            found += index.first([rel + ".py", rel + "/__init__.py", rel + ".pyi"], path)
    return found


def _java(node: tree_sitter.Node, path: str, index: PathIndex) -> list[int]:
    text = node.text.decode().removeprefix("import").strip().removesuffix(";").strip()
    text = text.removeprefix("static").strip()
    if text.endswith(".*"):
        return [i for i in index.directory(text[:-2].replace(".", "/")) if index.paths[i].endswith(".java")]
    parts = text.split(".")
    return index.first(["/".join(parts) + ".java", "/".join(parts[:-1]) + ".java"], path)


_JS_EXTS = ("", ".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".d.ts")


def _js(node: tree_sitter.Node, path: str, index: PathIndex) -> list[int]:
    spec = _strip_quotes(node.text.decode())
    if not spec.startswith("."):
        return []  # a package, not a file of this repository
    rel = posixpath.normpath(posixpath.join(posixpath.dirname(path), spec))
    cands = [rel + e for e in _JS_EXTS] + [f"{rel}/index{e}" for e in _JS_EXTS[1:]]
    return [index.exact[c] for c in cands if c in index.exact][:1]


def _c(node: tree_sitter.Node, path: str, index: PathIndex) -> list[int]:
    spec = _strip_quotes(node.text.decode())
    local = posixpath.normpath(posixpath.join(posixpath.dirname(path), spec))
    return [index.exact[local]] if local in index.exact else index.first([spec], path)


def _go(node: tree_sitter.Node, path: str, index: PathIndex) -> list[int]:
    parts = _strip_quotes(node.text.decode()).split("/")
    for k in range(len(parts)):  # the longest suffix of the import path that is a directory here
        hits = [i for i in index.directory("/".join(parts[k:])) if index.paths[i].endswith(".go")]
        if hits:
            return hits
    return []


def _rust(node: tree_sitter.Node, path: str, index: PathIndex) -> list[int]:
    text = node.text.decode()
    here, stem = posixpath.split(path)
    if node.type == "identifier":  # `mod name;`
        root = here if stem in ("lib.rs", "main.rs", "mod.rs") else posixpath.join(here, stem[:-3])
        cands = [posixpath.join(root, text + ".rs"), posixpath.join(root, text, "mod.rs")]
        return [index.exact[c] for c in map(posixpath.normpath, cands) if c in index.exact][:1]
    parts = text.split("::{")[0].split("::")
    if parts[0] not in ("crate", "self", "super"):
        return []
    mods = parts[1:]
    cands = []
    for k in range(len(mods), 0, -1):
        cands += ["/".join(mods[:k]) + ".rs", "/".join(mods[:k]) + "/mod.rs"]
    return index.first(cands, path)


def _csharp(node: tree_sitter.Node, path: str, index: PathIndex) -> list[int]:
    text = node.text.decode().removeprefix("using").strip().removesuffix(";").strip()
    text = text.removeprefix("static").strip().split("=")[-1].strip()
    return [i for i in index.directory(text.replace(".", "/")) if index.paths[i].endswith(".cs")]


RESOLVERS = {
    "Python": _python,
    "Java": _java,
    "JavaScript": _js,
    "TypeScript": _js,
    "TSX": _js,
    "C": _c,
    "C++": _c,
    "Go": _go,
    "Rust": _rust,
    "C#": _csharp,
}


def dependencies(files: list[SourceFile]) -> list[set[int]]:
    """deps[i]: indices of the repository files that file i imports (never itself)."""
    paths = [f.path for f in files]
    index = PathIndex(paths)
    deps: list[set[int]] = []
    for i, f in enumerate(files):
        query, resolve = _imports_query(f.lang), RESOLVERS.get(f.lang)
        found: set[int] = set()
        if query is not None and resolve is not None and (tree := f.tree()) is not None:
            for node in tree_sitter.QueryCursor(query).captures(tree.root_node).get("import", []):
                found.update(resolve(node, f.path, index))
        found.discard(i)
        deps.append(found)
    return deps


def _users(deps: list[set[int]]) -> list[list[int]]:
    users: list[list[int]] = [[] for _ in deps]
    for i, d in enumerate(deps):
        for j in sorted(d):
            users[j].append(i)
    return users


def dependency_walk(deps: list[set[int]], rng: random.Random) -> list[int]:
    """Algorithm 1's dependency strategy as printed: take a leaf of the graph (a file that imports no
    file left), then walk up its chain of users, appending each as it is reached; a user joins the
    leaves once every file it imports is placed.

    Readings where the printed loop is open: the next leaf and the next user up the chain are drawn
    at random; a user reached by the walk is appended even if it still imports unplaced files (line
    40 as printed), and a file is appended once, at its first appearance; when no leaf is left but
    files are (a cycle, or files above one), the unplaced file importing the fewest unplaced files
    becomes a leaf (DeepSeek-Coder's cycle rule), ties at random.
    """
    n = len(deps)
    users, left = _users(deps), [set(d) for d in deps]
    placed, order = [False] * n, []
    leaves = [i for i in rng.sample(range(n), n) if not left[i]]

    def place(i: int) -> None:
        placed[i] = True
        order.append(i)
        for u in users[i]:
            left[u].discard(i)
            if not left[u] and not placed[u]:
                leaves.append(u)

    while len(order) < n:
        if not leaves:
            rest = [i for i in range(n) if not placed[i]]
            fewest = min(len(left[i]) for i in rest)
            leaves.append(rng.choice([i for i in rest if len(left[i]) == fewest]))
        cur = leaves.pop(rng.randrange(len(leaves)))
        if placed[cur]:
            continue
        place(cur)
        while up := [u for u in users[cur] if not placed[u]]:
            cur = rng.choice(up)
            place(cur)
    return order


def dependency_kahn(deps: list[set[int]], rng: random.Random) -> list[int]:
    """Ours: every dependency before its users (Kahn's order); on a cycle, the file with the fewest
    unplaced dependencies goes next (DeepSeek-Coder's rule), ties broken at random."""
    n = len(deps)
    users = _users(deps)
    waiting = [len(d) for d in deps]
    tie = rng.sample(range(n), n)
    heap = [(waiting[i], tie[i], i) for i in range(n)]
    heapq.heapify(heap)
    placed, order = [False] * n, []
    while heap:
        k, _, i = heapq.heappop(heap)
        if placed[i] or k != waiting[i]:
            continue  # stale entry
        placed[i] = True
        order.append(i)
        for u in users[i]:
            if not placed[u]:
                waiting[u] -= 1
                heapq.heappush(heap, (waiting[u], tie[u], u))
    return order
