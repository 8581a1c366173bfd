"""Every kind of source: git history and default-branch tree, archives, Stack-style tables, and
the installed environment with licenses read from metadata."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MIT, stdlib

from codemill.curate.config import CurateConfig
from codemill.curate.sources import expand, open_unit, read_bytes
from codemill.curate.table_sources import ShuffleStep, bucket_repositories, pieces
from codemill.langs import detect

CFG = CurateConfig()


def _files(unit):
    meta, files = open_unit(unit, CFG)
    return meta, {f.path: f for f in files}


def test_git_repository_reads_default_branch_and_counts_commits(tmp_path):
    repo = tmp_path / "proj"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q", "-b", "main"], check=True)
    (repo / "LICENSE").write_text(MIT)
    (repo / "a.py").write_text(stdlib("colorsys.py"))
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    (repo / "b.py").write_text("x = 1\ny = 2\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "two"], check=True)
    (repo / "untracked.py").write_text("junk = 1\n")
    (repo / "a.py").write_text("modified in the working tree, not committed\n")
    [unit] = expand(str(repo), CFG)
    meta, files = _files(unit)
    assert unit.kind == "git" and meta.commits == 2 and meta.license == "MIT"
    assert set(files) == {"LICENSE", "a.py", "b.py"}
    data, err = read_bytes(files["a.py"], 10**6)
    assert err is None and data.decode() == stdlib("colorsys.py")


def test_archives_strip_their_top_folder(tmp_path):
    src = tmp_path / "src" / "pkg-1.0"
    src.mkdir(parents=True)
    (src / "LICENSE").write_text(MIT)
    (src / "mod.py").write_text(stdlib("colorsys.py"))
    with tarfile.open(tmp_path / "pkg-1.0.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="pkg-1.0")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.write(src / "mod.py", "mod.py")
        zf.write(src / "LICENSE", "LICENSE")
    for name in ("pkg-1.0.tar.gz", "other.zip"):
        [unit] = expand(str(tmp_path / name), CFG)
        meta, files = _files(unit)
        assert set(files) == {"LICENSE", "mod.py"} and meta.license == "MIT"
        assert read_bytes(files["mod.py"], 10**6)[0].decode() == stdlib("colorsys.py")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 truncated")
    [unit] = expand(str(tmp_path / "bad.zip"), CFG)
    _, files = _files(unit)
    assert [f.error for f in files.values()] == ["broken_archive:BadZipFile"]


def test_stack_style_tables_are_shuffled_into_repository_buckets(tmp_path):
    rows = [
        {"code": stdlib("colorsys.py"), "file": "c.py", "repository": "org/one", "lic": "MIT", "stars": 12},
        {"code": "x = 1\n", "file": "x.py", "repository": "org/two", "lic": "GPL-3.0-only", "stars": 1},
        {"code": stdlib("bisect.py"), "file": "b.py", "repository": "org/one", "lic": "MIT", "stars": 12},
        {"code": None, "file": "n.py", "repository": "org/two", "lic": "GPL-3.0-only", "stars": 1},
    ] + [
        {"code": f"v = {i}\n", "file": f"f{i}.py", "repository": f"org/r{i % 7}", "lic": "MIT"}
        for i in range(40)
    ]
    cfg = CurateConfig(
        tasks=2,
        columns={"content": "code", "path": "file", "repo": "repository", "license": "lic", "stars": "stars"},
    )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet", row_group_size=3)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    for name in ("t.parquet", "t.jsonl"):
        [unit] = expand(str(tmp_path / name), cfg)
        assert unit.kind == "table"
        found, *_ = pieces(unit.locator, cfg, jsonl_piece=100)  # JSONL pieces end inside lines
        assert len(found) > 10
        work = tmp_path / name.replace(".", "-")
        step = ShuffleStep(found, 3, cfg, str(work))
        for rank in range(2):
            list(step.run(rank=rank, world_size=2))
        repos = {}
        for b in range(3):
            for meta, files in bucket_repositories(work / "shuffle" / f"{b:05d}"):
                assert meta.name not in repos, "a repository went to two buckets"
                repos[meta.name] = (meta, {f.path: f for f in files})
        assert sum(len(f) for _, f in repos.values()) == len(rows) + name.endswith("jsonl")
        meta, files = repos["org/one"]
        assert meta.license == "MIT" and meta.stars == 12 and set(files) == {"b.py", "c.py"}
        assert read_bytes(files["b.py"], 10**6)[0].decode() == stdlib("bisect.py")
        meta2, files2 = repos["org/two"]
        assert meta2.license == "GPL-3.0-only" and files2["n.py"].error == "no_content"
        if name.endswith("jsonl"):
            [bad] = repos["unknown"][1].values()
            assert bad.error == "no_content" and bad.path.startswith("row-")


def test_installed_environment_reads_licenses_from_metadata():
    units = expand("installed", CFG)
    assert units[0].kind == "stdlib"
    by_name = {u.name.rsplit("-", 1)[0].lower(): u for u in units}
    meta, files = open_unit(by_name["numpy"], CFG)
    assert (
        meta.license
        and "BSD-3-Clause" in meta.license
        and meta.license_source in ("License-Expression", "License", "classifiers")
    )
    assert any(p.endswith("numpy/__init__.py") for p in (f.path for f in files))
    meta, files = open_unit(units[0], CFG)
    assert meta.license == "Python-2.0" and meta.license_source == "license-file"
    assert any(f.path == "textwrap.py" for f in files)


def test_language_table():
    assert detect("a/b/c.py").name == "Python"
    assert detect("src/Main.java").name == "Java"
    assert detect("x.tsx").name == "TSX"
    assert detect("Makefile").name == "Makefile"
    assert detect("README.md").kind == "prose"
    assert detect("data.bin") is None


def test_npm_packages_are_repositories_with_their_package_json_license(tmp_path, monkeypatch):
    # a real npm package, packed by npm from a folder (offline): the one npm itself ships
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, check=True).stdout.strip()
    pkg = shutil.copytree(Path(root) / "npm" / "node_modules" / "semver", tmp_path / "semver")
    meta_json = json.loads((pkg / "package.json").read_text())
    monkeypatch.setenv("CODEMILL_CACHE", str(tmp_path / "cache"))
    [unit] = expand(f"npm:{pkg}", CFG)
    assert unit.kind == "archive" and unit.name == f"semver@{meta_json['version']}"
    meta, files = _files(unit)
    assert meta.license == "ISC" and meta.license_source == "package.json"
    assert "package.json" in files and "index.js" in files
    assert detect(next(p for p in files if p.endswith(".js"))).name == "JavaScript"
    with pytest.raises(ValueError, match="not an npm package spec"):
        expand("npm:not a spec!", CFG)


def test_installed_distributions_list_their_record_files_as_importlib_metadata_does():
    """_open_dist reads RECORD itself: the same paths as `dist.files`, in order, sized by stat."""
    import importlib.metadata as md
    import os

    for unit in expand("installed", CFG)[1:]:
        dist = md.Distribution.at(unit.locator)
        want = [p for p in sorted(map(str, dist.files or [])) if not p.startswith("..")]
        _, files = open_unit(unit, CFG)
        files = list(files)
        assert [f.path for f in files] == want, unit.name
        for f in files[:: max(1, len(files) // 20)]:
            full = os.path.join(str(dist.locate_file("")), f.path)
            assert f.size == (os.stat(full).st_size if os.path.exists(full) else 0)


def test_the_standard_library_leaves_its_site_folder_to_the_distributions():
    _, files = open_unit(expand("installed", CFG)[0], CFG)
    paths = [f.path for f in files]
    assert "textwrap.py" in paths and "json/decoder.py" in paths
    assert not [p for p in paths if p.split("/", 1)[0] in ("site-packages", "dist-packages")]


def test_a_file_read_after_it_grew_is_read_to_the_limit(tmp_path):
    """The reader starts with the listed size but reads on, as a buffered open did."""
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("")
    [unit] = expand(str(tmp_path), CFG)
    _, files = _files(unit)
    (tmp_path / "a.py").write_text("x = 1\n" * 30_000)  # 180,000 bytes: several reads
    assert files["a.py"].size == 6
    assert read_bytes(files["a.py"], 10**6) == (b"x = 1\n" * 30_000, None)
    assert files["a.py"].read(100_000) == (b"x = 1\n" * 30_000)[:100_000]
    assert read_bytes(files["b.py"], 10**6) == (b"", None)
    (tmp_path / "b.py").unlink()
    assert read_bytes(files["b.py"], 10**6) == (None, "unreadable")
