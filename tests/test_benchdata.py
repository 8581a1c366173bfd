"""Published benchmark data works out of the box: what ships matches its registry entry, a copy of the
repository with no sibling folder and no settings loads every suite, and downloads (from a server on
127.0.0.1) land in the cache only with the pinned checksum."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from codemill.errors import UserError
from codemill.eval import benchdata
from codemill.eval.benchdata import FILES, PACKAGE_DATA, find, locate

ROOT = Path(__file__).resolve().parents[1]
SANTACODER = "santacoder-fim/santacoder-fim-task.train.parquet"
RECORDS = {  # the counts the benchmarks' papers and data/README.md give
    "mbpp/mbpp.jsonl": 974,
    "mbpp/sanitized-mbpp.json": 427,
    "multipl-e/humaneval-cpp.jsonl": 161,
    "multipl-e/humaneval-java.jsonl": 158,
    "multipl-e/humaneval-js.jsonl": 161,
    "human-eval-infilling/HumanEval-SingleLineInfilling.jsonl.gz": 1033,
    "human-eval-infilling/HumanEval-MultiLineInfilling.jsonl.gz": 5815,
    "human-eval-infilling/HumanEval-RandomSpanInfilling.jsonl.gz": 1640,
    "human-eval-infilling/HumanEval-RandomSpanInfillingLight.jsonl.gz": 164,
    "safim/api_completion.jsonl.gz": 310,
    "safim/block_completion.jsonl.gz": 8781,
    "safim/control_completion.jsonl.gz": 8629,
}


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No override, no mirror, an empty cache and home."""
    for name in ("CODEMILL_BENCHMARKS", "CODEMILL_BENCHMARKS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CODEMILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "cache" / "benchmarks"


@pytest.fixture
def server(tmp_path):
    """A static HTTP server on 127.0.0.1 over tmp_path/www: (its base URL, its directory)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=www))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_shipped_file_is_the_registered_one_with_its_license():
    shipped = {e.shipped or e.rel for e in FILES.values() if e.bundled}
    for rel, e in FILES.items():
        assert e.license and e.source and len(e.sha256) == 64 and e.size > 0, rel
        if not e.bundled:
            assert e.url.startswith("https://raw.githubusercontent.com/") and " @" in e.source, rel
            continue
        p = PACKAGE_DATA / (e.shipped or e.rel)
        assert p.stat().st_size == e.size and benchdata.sha256_of(p) == e.sha256, rel
        if e.upstream_sha256:  # gzipped here: the published bytes inside
            assert hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest() == e.upstream_sha256
        text = benchdata.read_text(p)
        n = len(json.loads(text)) if rel.endswith(".json") else len(text.splitlines())
        assert n == RECORDS[rel], rel
        assert {"LICENSE", "NOTICE"} & {f.name for f in p.parent.iterdir()}, f"{rel}: no license beside it"
    extra = {
        str(f.relative_to(PACKAGE_DATA))
        for f in PACKAGE_DATA.rglob("*")
        if f.is_file() and f.name not in ("README.md", "NOTICE") and not f.name.startswith("LICENSE")
    }
    assert extra == shipped  # nothing ships unregistered
    table = (PACKAGE_DATA / "README.md").read_text()
    assert all(f"| {rel.removesuffix('.gz')}" in table for rel in FILES)


def test_a_copy_of_the_repository_without_shared_or_settings_loads_every_suite(tmp_path):
    """The working tree's src/ and pyproject.toml (what a clone or `pip install` has) copied away, run
    from a directory with no benchmark folder beside it, no CODEMILL_BENCHMARKS, an empty cache and no
    network."""
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "src", "pyproject.toml"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    copy = tmp_path / "clone"
    for name in names:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    cwd = tmp_path / "elsewhere" / "run"
    cwd.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEMILL_")}
    env |= {
        "PYTHONPATH": str(copy / "src"),
        "HOME": str(tmp_path / "home"),
        "CODEMILL_CACHE": str(tmp_path / "cache"),
        "CODEMILL_BENCHMARKS_URL": f"http://127.0.0.1:{closed_port()}",  # offline
    }
    script = """
import json, sys
import codemill
from codemill.errors import UserError
from codemill.eval import benchdata
from codemill.eval.suites import SUITES
out = {"package": codemill.__file__, "suites": {}, "files": {}}
for name, suite in SUITES.items():
    try:
        out["suites"][name] = len(suite.load())
    except UserError as e:
        out["suites"][name] = str(e)
out["mbpp-test"] = len(SUITES["mbpp"].load(split="test"))
for rel in benchdata.FILES:
    try:
        text = benchdata.read_text(benchdata.locate(rel))
        out["files"][rel] = len(json.loads(text)) if rel.endswith(".json") else len(text.splitlines())
    except UserError as e:
        out["files"][rel] = str(e)
json.dump(out, sys.stdout)
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert Path(got["package"]).is_relative_to(copy)
    suites = got["suites"]
    assert {k: suites[k] for k in ("humaneval", "mbpp", "multipl-e-cpp", "multipl-e-java", "multipl-e-js")} == {
        "humaneval": 164, "mbpp": 974, "multipl-e-cpp": 161, "multipl-e-java": 158, "multipl-e-js": 161,
    }  # fmt: skip
    assert got["mbpp-test"] == 500
    assert "not distributed here" in suites["fim-eval"] and "not distributed here" in suites["crosscodeeval"]
    # download-only data, offline: the error says what to fetch from where and where to put it
    cached = tmp_path / "cache" / "benchmarks" / SANTACODER
    assert f"place it at {cached} " in suites["santacoder-fim"]
    assert FILES[SANTACODER].sha256 in suites["santacoder-fim"]
    for rel, e in FILES.items():
        if e.bundled:
            assert got["files"][rel] == RECORDS[rel], rel
        else:
            assert f"place it at {tmp_path / 'cache' / 'benchmarks' / rel} " in got["files"][rel]
    assert not (tmp_path / "cache" / "benchmarks" / SANTACODER).exists()


def small_santacoder_parquet(path: Path) -> bytes:
    """Three rows in SantaCoder-FIM's schema, one per language."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"name": f"t{i}", "language": lang, "prompt": pre, "suffix": suf, "canonical_solution": mid,
         "tests": tests}
        for i, (lang, pre, mid, suf, tests) in enumerate([
            ("py", "def add(a, b):", "    s = a + b", "    return s", "assert add(1, 2) == 3"),
            ("js", "function add(a, b) {", "  const s = a + b;", "  return s;\n}", "console.assert(add(1, 2) === 3);"),
            ("java", "int add(int a, int b) {", "  int s = a + b;", "  return s;\n}", ""),
        ])
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path.read_bytes()


def test_a_download_lands_in_the_cache_with_its_checksum_and_loads(clean_env, server, monkeypatch):
    from codemill.eval.suites import santacoder_fim

    base, www = server
    data = small_santacoder_parquet(www / SANTACODER)
    entry = dataclasses.replace(
        FILES[SANTACODER], sha256=hashlib.sha256(data).hexdigest(), size=len(data), url=f"{base}/{SANTACODER}"
    )
    files = {SANTACODER: entry}
    assert find(SANTACODER, files) is None
    got = locate(SANTACODER, files)  # from the entry's own URL
    assert got == clean_env / SANTACODER and got.read_bytes() == data
    assert sorted(p.name for p in got.parent.iterdir()) == [got.name]  # no temporary file left
    tasks = santacoder_fim(data=str(got))
    assert [t.language for t in tasks] == ["Python", "JavaScript", "Java"] and tasks[
        0
    ].target == "    s = a + b"
    # the cache answers from now on, without the network
    (www / SANTACODER).unlink()
    assert find(SANTACODER, files) == got == locate(SANTACODER, files)
    # a cached file whose checksum fails is fetched again, here from a mirror of the layout
    got.write_bytes(b"truncated")
    monkeypatch.setenv("CODEMILL_BENCHMARKS_URL", base + "/mirror/")
    small_santacoder_parquet(www / "mirror" / SANTACODER)
    assert find(SANTACODER, files) is None
    assert locate(SANTACODER, files).read_bytes() == data


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(clean_env, server, monkeypatch):
    base, www = server
    small_santacoder_parquet(www / SANTACODER)
    monkeypatch.setenv("CODEMILL_BENCHMARKS_URL", base)
    expected = FILES[SANTACODER].sha256  # the real pin: the file served is another
    got = hashlib.sha256((www / SANTACODER).read_bytes()).hexdigest()
    with pytest.raises(UserError, match=f"SHA-256 {got}, expected {expected}"):
        locate(SANTACODER)
    assert not any(p.is_file() for p in clean_env.rglob("*"))


def test_offline_the_error_names_the_url_the_checksum_and_the_path(clean_env, monkeypatch):
    # every connection goes through a proxy nobody listens on: offline, without touching the network
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port()}")
    e = FILES[SANTACODER]
    with pytest.raises(UserError) as info:
        locate(SANTACODER)
    msg = str(info.value)
    assert f"Download {e.url} and place it at {clean_env / SANTACODER} (SHA-256 {e.sha256})" in msg
    assert "--data" in msg and not any(p.is_file() for p in clean_env.rglob("*"))


def test_a_missing_file_on_the_mirror_is_an_error_naming_it(clean_env, server, monkeypatch):
    base, _ = server
    monkeypatch.setenv("CODEMILL_BENCHMARKS_URL", base)
    with pytest.raises(UserError, match=f"could not download {SANTACODER} \\(HTTP Error 404"):
        locate(SANTACODER)


def test_codemill_benchmarks_overrides_every_copy(clean_env, tmp_path, monkeypatch):
    from codemill.eval.suites import mbpp, multipl_e

    mine = tmp_path / "mine"
    (mine / "mbpp").mkdir(parents=True)
    lines = benchdata.read_text(locate("mbpp/mbpp.jsonl")).splitlines()
    (mine / "mbpp" / "mbpp.jsonl").write_text("\n".join(lines[10:20]) + "\n")  # ten test-split problems
    monkeypatch.setenv("CODEMILL_BENCHMARKS", str(mine))
    assert locate("mbpp/mbpp.jsonl") == mine / "mbpp" / "mbpp.jsonl"
    assert [t.id for t in mbpp(split="test")] == [f"MBPP/{i}" for i in range(11, 21)]
    with pytest.raises(UserError, match=f"CODEMILL_BENCHMARKS={mine} has no multipl-e/humaneval-js.jsonl"):
        multipl_e("js")
