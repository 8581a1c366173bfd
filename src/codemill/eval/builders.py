"""Benchmarks of FIM-Eval's shape built from held-out repositories of a curated corpus.

Repositories are held out by a keyed hash of their name (`heldout_repos.txt`, written beside the
benchmark, lists every held-out repository whatever its languages; `data.exclude_repos` keeps them
out of training), so a model is evaluated on code it never saw. Spans come from tree-sitter, one task per type per file at most, in FIM-Eval's 13 types.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import tree_sitter
import xxhash

from codemill.curate.corpus import corpus_rows
from codemill.data.objectives import function_query
from codemill.errors import UserError
from codemill.eval.suites import CCEVAL_FILES
from codemill.flow.layout import HELDOUT_FILES, HELDOUT_REPOS
from codemill.langs import BENCHMARK_NAMES, ts_language, ts_parser

LANGS = BENCHMARK_NAMES["fim-eval"]  # FIM-Eval's four languages and TypeScript, named as its files are
STATEMENTS = {
    "if_statement": ("if_statement",),
    "for_statement": ("for_statement", "enhanced_for_statement", "for_in_statement", "for_range_loop"),
    "while_statement": ("while_statement", "do_statement"),
    "try_statement": ("try_statement", "try_with_resources_statement"),
    "switch_case": ("switch_block_statement_group", "switch_rule", "switch_case", "case_statement"),
}
TYPES = (
    "method_signature",
    "method_body",
    "single_line",
    "method_with_comment",
    "empty",
    "method_body_top",
    "method_body_mid",
    "method_body_bottom",
    *STATEMENTS,
)


def held_out(repo: str, fraction: float, seed: int, path: str | None = None) -> bool:
    """Whether a repository (or, with `path`, one file of it) is held out: a keyed hash, so the same
    ones whatever else the corpus holds."""
    key = f"{seed}\x00{repo}" if path is None else f"{seed}\x00{repo}\x00{path}"
    return xxhash.xxh64_intdigest(key) % 1_000_000 < fraction * 1_000_000


class _Holdout:
    """What one builder holds out, as it meets the corpus's files: whole repositories (`unit`
    "repo"), or a keyed share of every repository's files ("file"); both builders hold out the same."""

    def __init__(self, fraction: float, seed: int, unit: str):
        self.fraction, self.seed, self.unit = fraction, seed, unit
        self.repos: set[str] = set()  # held out in any language: none of them may reach training
        self.files: set[tuple[str, str]] = set()

    def __call__(self, repo: str, path: str) -> bool:
        held = held_out(repo, self.fraction, self.seed, path if self.unit == "file" else None)
        if held and self.unit == "file":
            self.files.add((repo, path))
        elif held:
            self.repos.add(repo)
        return held

    def write(self, out: Path) -> None:
        """heldout_repos.txt (`data.exclude_repos`) and, holding out files, heldout_files.txt
        (`data.exclude_files`: repository and path, a tab between)."""
        (out / HELDOUT_REPOS).write_text("".join(r + "\n" for r in sorted(self.repos)))
        if self.files:
            (out / HELDOUT_FILES).write_text("".join(f"{r}\t{p}\n" for r, p in sorted(self.files)))


def _corpus_rows(corpus: str | Path):
    """(repo, path, lang, content) of every corpus file, in corpus order."""
    return corpus_rows(corpus, ["repo", "path", "lang", "content"])


def _functions(lang: str, tree) -> list[tree_sitter.Node]:
    return tree_sitter.QueryCursor(function_query(lang)).captures(tree.root_node).get("f", [])


def _trim(src: bytes, a: int, b: int) -> tuple[int, int]:
    while a < b and src[a : a + 1].isspace():
        a += 1
    while b > a and src[b - 1 : b].isspace():
        b -= 1
    return a, b


def _lines(src: bytes, a: int, b: int) -> list[tuple[int, int]]:
    """Non-empty lines in [a, b) as (first non-space, line end) byte spans."""
    out = []
    for m in re.finditer(rb"[^\n]+", src[a:b]):
        s, e = _trim(src, a + m.start(), a + m.end())
        if s < e:
            out.append((s, e))
    return out


def spans(lang: str, src: bytes, tree) -> dict[str, list[tuple[int, int]]]:
    """Candidate middles per task type, as byte spans."""
    found: dict[str, list[tuple[int, int]]] = {t: [] for t in TYPES}
    for fn in _functions(lang, tree):
        body = fn.child_by_field_name("body")
        if body is None or body.end_byte - body.start_byte < 2:
            continue
        found["method_signature"].append(_trim(src, fn.start_byte, body.start_byte))
        inner = (
            (body.start_byte + 1, body.end_byte - 1)
            if src[body.start_byte : body.start_byte + 1] == b"{"
            else (body.start_byte, body.end_byte)
        )
        inner = _trim(src, *inner)
        if inner[0] < inner[1]:
            found["method_body"].append(inner)
            lines = _lines(src, *inner)
            found["single_line"] += lines
            found["empty"] += [(s, s) for s, _ in lines[1:]]
            if len(lines) >= 3:
                k = len(lines) // 3
                found["method_body_top"].append((lines[0][0], lines[k - 1][1]))
                found["method_body_mid"].append((lines[k][0], lines[2 * k - 1][1]))
                found["method_body_bottom"].append((lines[2 * k][0], lines[-1][1]))
        prev = fn.prev_named_sibling
        if prev is not None and "comment" in prev.type and fn.start_point.row - prev.end_point.row <= 1:
            found["method_with_comment"].append((prev.start_byte, fn.end_byte))
        stack = list(fn.children)
        while stack:
            n = stack.pop()
            for kind, names in STATEMENTS.items():
                if n.type in names and not (kind == "switch_case" and lang == "Python"):
                    found[kind].append((n.start_byte, n.end_byte))
            stack += n.children
    return found


def _require_held_out(held: set[str], seen: set[str], langs, corpus, holdout: float) -> None:
    """An empty benchmark would evaluate nothing and hold nothing out of training: an error."""
    if not held:
        raise UserError(
            f"none of the {len(seen)} repositories of {corpus} with {', '.join(sorted(langs))} files falls "
            f"in the held-out share ({holdout:g}); raise it (--holdout, or run.holdout in a recipe) or "
            "curate more repositories"
        )


def build_fim(
    corpus: str | Path, out: str | Path, *, holdout: float = 0.1, per_type: int = 100, seed: int = 0,
    unit: str = "repo",
) -> dict:  # fmt: skip
    """Write `{python,java,javascript,cplus,typescript}_test.jsonl` and the held-out lists (`_Holdout.write`);
    return counts. `unit` "file": a keyed share of every repository's files is held out instead of
    whole repositories (a team with one repository still gets a benchmark)."""
    out = Path(out)
    rows: dict[str, list[dict]] = {k: [] for k in LANGS.values()}
    counts: Counter[tuple[str, str]] = Counter()
    repos: set[str] = set()
    seen: set[str] = set()
    hold = _Holdout(holdout, seed, unit)
    for repo, path, lang, text in _corpus_rows(corpus):
        held = hold(repo, path)
        if lang in LANGS:
            seen.add(repo)
        if lang not in LANGS or not held:
            continue
        repos.add(repo)
        src = text.encode()
        rng = random.Random(xxhash.xxh64_intdigest(f"{seed}\x00{repo}\x00{path}"))
        for kind, cands in spans(lang, src, ts_parser(lang).parse(src)).items():
            if not cands or counts[(lang, kind)] >= per_type:
                continue
            a, b = rng.choice(cands)
            key = LANGS[lang]
            rows[key].append({
                "task_id": f"{repo}/{path}#{kind}",
                "pre_mask_code": src[:a].decode(),
                "post_mask_code": src[b:].decode(),
                "canonical_solution": src[a:b].decode(),
                "task_type": kind,
                "repo": repo,
                "path": path,
            })  # fmt: skip
            counts[(lang, kind)] += 1
    _require_held_out(repos, seen, LANGS, corpus, holdout)
    out.mkdir(parents=True, exist_ok=True)
    for key, items in rows.items():
        if items:
            (out / f"{key}_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    hold.write(out)
    return {"repos": len(repos), "files": len(hold.files),
            "tasks": {f"{lang}/{kind}": n for (lang, kind), n in sorted(counts.items())}}  # fmt: skip


CROSSFILE_LANGS = BENCHMARK_NAMES["crosscodeeval"]
_DEFS = {
    "Python": "(function_definition name: (identifier) @d) (class_definition name: (identifier) @d)",
    "Java": "(method_declaration name: (identifier) @d) (class_declaration name: (identifier) @d)",
    "TypeScript": "(function_declaration name: (identifier) @d) (class_declaration name: (type_identifier) @d)",
    "C#": "(method_declaration name: (identifier) @d) (class_declaration name: (identifier) @d)",
}
_WORD = re.compile(r"\w+")


def _definitions(lang: str, src: bytes) -> set[str]:
    query = tree_sitter.Query(ts_language(lang), _DEFS[lang])
    nodes = tree_sitter.QueryCursor(query).captures(ts_parser(lang).parse(src).root_node).get("d", [])
    return {n.text.decode() for n in nodes if len(n.text) > 3}


def _chunks(path: str, text: str, size: int = 10) -> list[tuple[str, str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [(path, "\n".join(lines[i : i + size])) for i in range(0, len(lines), size)]


def _retrieve(chunks: list[tuple[str, str]], query: str, top: int = 5) -> list[dict]:
    from rank_bm25 import BM25Okapi

    if not chunks:
        return []
    bm25 = BM25Okapi([_WORD.findall(c) or [""] for _, c in chunks])
    scores = bm25.get_scores(_WORD.findall(query))
    best = sorted(range(len(chunks)), key=lambda i: -scores[i])[:top]
    return [
        {"retrieved_chunk": chunks[i][1], "filename": chunks[i][0], "score": float(scores[i])} for i in best
    ]


def build_crossfile(
    corpus: str | Path, out: str | Path, *, holdout: float = 0.1, seed: int = 0, per_repo: int = 20,
    unit: str = "repo",
) -> dict:  # fmt: skip
    """CrossCodeEval-shaped tasks from held-out repositories: the target line uses a name defined in
    another file of the repository and not in its own; the three files of the published layout
    (in-file, BM25 over 10-line chunks of the other files queried by the last 10 prompt lines, and
    the same queried with the reference line: the oracle). With `unit` "file" the targets are the
    held-out files and the other files of their repository (trained on) are what retrieval reads."""
    out = Path(out)
    by_repo: dict[str, list[tuple[str, str, str]]] = {}
    seen: set[str] = set()
    hold = _Holdout(holdout, seed, unit)
    for repo, path, lang, text in _corpus_rows(corpus):
        held = hold(repo, path)
        if lang in CROSSFILE_LANGS:
            seen.add(repo)
            if held or unit == "file":
                by_repo.setdefault(repo, []).append((path, lang, text))
    targets = {r for r, _ in hold.files} if unit == "file" else set(by_repo)
    _require_held_out(targets & set(by_repo), seen, CROSSFILE_LANGS, corpus, holdout)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, list[dict]]] = {
        k: {s: [] for s in ("infile", "retrieval", "oracle")} for k in CROSSFILE_LANGS.values()
    }
    for repo, items in sorted(by_repo.items()):
        defs = {path: _definitions(lang, text.encode()) for path, lang, text in items}
        rng = random.Random(xxhash.xxh64_intdigest(f"{seed}\x00{repo}"))
        made = 0
        for path, lang, text in rng.sample(items, len(items)):
            if made >= per_repo:
                break
            if unit == "file" and (repo, path) not in hold.files:
                continue  # trained on: context for the held-out files only
            foreign = {d for p, ds in defs.items() if p != path for d in ds} - defs[path]
            lines = text.splitlines(keepends=True)
            candidates = [
                i
                for i, line in enumerate(lines)
                if i > 5 and foreign & set(_WORD.findall(line)) and line.strip()
            ]
            if not candidates:
                continue
            i = rng.choice(candidates)
            indent = len(lines[i]) - len(lines[i].lstrip())
            prompt = "".join(lines[:i]) + lines[i][:indent]
            truth = lines[i][indent:].rstrip("\n")
            chunks = [c for p, _, t in items if p != path for c in _chunks(p, t)]
            tail = "\n".join([x for x in prompt.splitlines() if x.strip()][-10:])
            base = {
                "prompt": prompt,
                "groundtruth": truth,
                "right_context": "".join(lines[i + 1 :]),
                "metadata": {"task_id": f"{repo}/{path}:{i + 1}", "repository": repo, "file": path, "groundtruth_start_lineno": i},
            }  # fmt: skip
            key = CROSSFILE_LANGS[lang]
            rows[key]["infile"].append({**base, "crossfile_context": {"text": "", "list": []}})
            for setting, query in (("retrieval", tail), ("oracle", tail + "\n" + truth)):
                rows[key][setting].append(
                    {**base, "crossfile_context": {"text": "", "list": _retrieve(chunks, query)}}
                )
            made += 1
    counts = {}
    for key, settings in rows.items():
        if not settings["infile"]:
            continue
        (out / key).mkdir(parents=True, exist_ok=True)
        for setting, items in settings.items():
            (out / key / CCEVAL_FILES[setting]).write_text("".join(json.dumps(r) + "\n" for r in items))
        counts[key] = len(settings["infile"])
    hold.write(out)
    return {"repos": len(targets & set(by_repo)), "files": len(hold.files), "tasks": counts}
