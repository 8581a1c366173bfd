"""The `codemill tokenizer` and `codemill data` commands, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest


def codemill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codemill.cli", *args], capture_output=True, text=True)


def test_tokenizer_train_then_stats_and_preview(code_corpus, tmp_path):
    tok = tmp_path / "tok"
    r = codemill("tokenizer", "train", str(code_corpus), "--out", str(tok), "--vocab-size", "1500")
    assert r.returncode == 0, r.stderr
    assert (tok / "tokenizer.json").exists() and "1,500 ids" in r.stdout

    out = tmp_path / "stats.json"
    r = codemill(
        "data", "stats", str(code_corpus), "--tokenizer", str(tok), "--set", "seq_len=512", "--json", str(out)
    )
    assert r.returncode == 0, r.stderr
    assert "objective mix" in r.stdout and "SFIM middle, bytes" in r.stdout
    assert "objectives drawn per repo" in r.stdout and "SFIM literal rule" in r.stdout
    stats = json.loads(out.read_text())
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in code_corpus.glob("files-*.parquet"))
    assert stats["repos"] == 8 and stats["files"] == rows  # one whole pass
    assert set(stats["objectives"]) == {"sfim", "fim", "ntp"}

    r = codemill(
        "data", "preview", str(code_corpus), "--tokenizer", str(tok), "--repo", "demo/polyglot", "--docs", "3"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ordering:") == 3 and "<file_sep>" in r.stdout


def test_data_errors_say_what_to_do(code_corpus, tmp_path):
    r = codemill("data", "stats", str(tmp_path), "--tokenizer", str(tmp_path))
    assert r.returncode == 2 and "codemill tokenizer train" in r.stdout
    r = codemill("tokenizer", "train", str(tmp_path), "--out", str(tmp_path / "t"), "--vocab-size", "300")
    assert r.returncode == 2 and "codemill curate" in r.stdout
    r = codemill("tokenizer", "train", str(code_corpus), "--out", str(tmp_path / "t"), "--vocab-size", "100")
    assert r.returncode == 2 and "smaller than" in r.stdout


def test_preview_finds_a_repository_without_its_version_and_suggests_close_names():
    from codemill.data.preview import find_repo

    repos = ["numpy-2.4.6", "numpy-financial-1.0.0", "lodash@4.18.1", "python-stdlib-3.11"]
    assert find_repo("numpy-2.4.6", repos) == "numpy-2.4.6"
    assert find_repo("numpy", repos) == "numpy-2.4.6"
    assert find_repo("lodash", repos) == "lodash@4.18.1"
    assert find_repo("python-stdlib", repos) == "python-stdlib-3.11"
    with pytest.raises(ValueError, match=r"did you mean python-stdlib-3\.11"):
        find_repo("pyton-stdlib-3.11", repos)
    with pytest.raises(ValueError, match=r"its 4 repositories: lodash@4\.18\.1, numpy-2\.4\.6"):
        find_repo("zzz", repos)
