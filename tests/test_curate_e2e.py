"""The whole curate stage on planted repositories: every drop reason, the corpus contract, and
that the input is never written to."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import MIT, tree_digest

from codemill.curate.checks import FileRules
from codemill.curate.config import CurateConfig
from codemill.curate.pipeline import curate
from codemill.errors import UserError


@pytest.fixture(scope="module")
def corpus(repos, tmp_path_factory):
    before = tree_digest(repos)
    out = tmp_path_factory.mktemp("corpus")
    cfg = CurateConfig(tasks=3, workers=2, drop_lowest_fraction=0.0)
    manifest = curate([str(repos)], out, cfg, quiet=True)
    assert tree_digest(repos) == before, "curation wrote to its input"
    return out, manifest


def _drops(out):
    return {(r["repo"], r["path"]): r for r in pq.read_table(out / "drops.parquet").to_pylist()}


def test_every_planted_case_is_dropped_for_its_reason(corpus):
    out, _ = corpus
    d = _drops(out)
    expect = {
        ("alpha", "api_pb2.py"): ("file_rules", "generated"),
        ("alpha", "broken.py"): ("syntax", "syntax_error"),
        ("alpha", "longline.py"): ("file_rules", "long_line"),
        ("alpha", "bad_utf8.py"): ("file_rules", "undecodable"),
        ("alpha", "binary.c"): ("file_rules", "binary"),
        ("alpha", "notes.md"): ("language", "not_code:prose"),
        ("alpha", "contaminated.py"): ("decontamination", "benchmark_overlap"),
        ("alpha", "secret.py"): ("sensitive_words", "sensitive_word"),
        ("alpha", "bug.py"): ("static_analysis", "bug:F701"),
        ("alpha", "fifo.py"): ("read", "not_regular"),
        ("alpha", "loop1.py"): ("read", "symlink_loop"),
        ("alpha", "huge.py"): ("file_rules", "too_large"),
        # beta has more test files, so its score is higher and its copies win
        ("alpha", "textwrap.py"): ("exact_dedup", "exact_duplicate"),
        ("alpha", "shlex.py"): ("near_dedup", "near_duplicate"),
        ("gamma-gpl", "heapq.py"): ("license", "not_permissive"),
        ("nolicense", "bisect.py"): ("license", "unknown_license"),
        ("tiny", "m00042.py"): ("file_rules", "trivial"),
        ("broken", "."): ("read", "broken_archive:ReadError"),
    }
    for key, (stage, reason) in expect.items():
        assert key in d, f"{key} was not dropped"
        assert (d[key]["stage"], d[key]["reason"]) == (stage, reason), key
    assert d[("alpha", "contaminated.py")]["detail"] == "HumanEval/HumanEval/0"


def test_corpus_contract(corpus):
    out, manifest = corpus
    shards = sorted(out.glob("files-*.parquet"))
    assert shards
    rows = [r for p in shards for r in pq.read_table(p).to_pylist()]
    kept = {(r["repo"], r["path"]) for r in rows}
    assert kept == {
        ("beta", "textwrap.py"),
        ("beta", "shlex_copy.py"),
        ("alpha", "colorsys.py"),
        ("alpha", "tests/test_alpha.py"),
        ("alpha", "settings.py"),
        ("beta", "tests/test_0.py"),
        ("beta", "tests/test_1.py"),
        ("beta", "tests/test_2.py"),
    }
    for r in rows:
        assert set(r) >= {"repo", "path", "lang", "content", "size", "sha256", "license"}
        assert r["license"] == "MIT"
    # rows of one repository are together within a shard
    for p in shards:
        names = pq.read_table(p, columns=["repo"]).column("repo").to_pylist()
        seen = [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]
        assert len(seen) == len(set(seen))
    repos = {r["repo"]: r for r in pq.read_table(out / "repos.parquet").to_pylist()}
    assert repos["alpha"]["license"] == "MIT" and repos["alpha"]["permissive"]
    assert repos["gamma-gpl"]["license"].startswith("GPL-3.0") and not repos["gamma-gpl"]["permissive"]
    assert repos["beta"]["test_files"] == 3
    assert repos["tiny"]["files"] == 2001
    # the stages chain: what leaves one enters the next, and the last one is the corpus
    stages = list(manifest["stages"].values())
    for prev, nxt in itertools.pairwise(stages):
        assert prev["files_out"] == nxt["files_in"]
    for s in stages:
        assert s["files_in"] == s["files_out"] + sum(s["drops"].values())
    assert stages[-1]["files_out"] == len(rows) == manifest["files"]["out"]
    # the sharded stages and their task counts: 3 parts (tasks=3), 21 bands x 1 key range
    assert manifest["stage_tasks"] == {
        "scan": 3, "score": 1, "exact": 3, "buckets": 21, "verify": 3, "cluster": 1, "refine": 3
    }  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["tools"]["datatrove"]


def test_pii_replaced_in_corpus(corpus):
    out, manifest = corpus
    rows = {r["path"]: r for p in out.glob("files-*.parquet") for r in pq.read_table(p).to_pylist()}
    s = rows["settings.py"]["content"]
    for tag in ("<PASSWORD>", "<KEY>", "<EMAIL>", "<IP_ADDRESS>"):
        assert tag in s
    assert "192.168.1.20" in s and "1.2.3.4" in s and "https://www.example.com/x" in s
    assert "hunter2secret" not in s and "52.14.201.77" not in s
    assert manifest["pii_replacements"]["PASSWORD"] >= 1


def test_near_duplicate_cluster_is_recorded(corpus):
    out, _ = corpus
    clusters = pq.read_table(out / "dedup_clusters.parquet").to_pylist()
    near = [c for c in clusters if c["kind"] == "near"]
    assert {(c["repo"], c["path"], c["kept"]) for c in near} == {
        ("beta", "shlex_copy.py", True),
        ("alpha", "shlex.py", False),
    }
    removed = next(c for c in near if not c["kept"])
    assert removed["duplicate_of"] == "beta/shlex_copy.py" and 0.85 <= removed["jaccard"] < 1


def test_corpus_stats_cli(corpus):
    out, _ = corpus
    res = subprocess.run(
        [sys.executable, "-m", "codemill.cli", "corpus", "stats", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "near_duplicate" in res.stdout and "syntax / syntax_error" in res.stdout


def test_repositories_say_why_the_score_cut_took_them_or_not(corpus):
    out, manifest = corpus
    repos = pq.read_table(out / "repos.parquet").to_pylist()
    assert {"score_signals", "score_reason", "code_license"} <= set(repos[0])
    assert all(r["score_reason"] for r in repos)
    # directories: test files are counted in the whole tree, so that signal is always known
    assert all("tests" in r["score_signals"].split(",") for r in repos if r["kind"] == "dir")
    assert manifest["repositories"]["score_unranked"] == sum(r["score_signals"] == "" for r in repos)


def test_a_bug_in_a_check_keeps_its_traceback(tmp_path, monkeypatch):
    """A check that fails by a bug surfaces as itself, traceback and all, not as a UserError line."""

    def planted(self, doc):
        return 1 / 0

    monkeypatch.setattr(FileRules, "check", planted)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "LICENSE").write_text(MIT)
    (repo / "a.py").write_text("x = 1\n")
    cfg = CurateConfig(tasks=1, workers=1, drop_lowest_fraction=0.0)  # in this process: the plant holds
    with pytest.raises(ZeroDivisionError) as info:
        curate([str(repo)], tmp_path / "out", cfg, quiet=True)
    assert not isinstance(info.value, UserError)
    assert any(entry.name == "planted" for entry in info.traceback)
    assert any(note.startswith("stage scan failed") for note in info.value.__notes__)
