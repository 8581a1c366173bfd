"""Curation quality on a labelled set of real files: precision per drop reason and language, recall
on planted defects, and the damage PII redaction does to what is kept.

    .venv/bin/python benchmarks/curate_quality.py [--src CHECKOUT] [--limit N] [--json OUT] [--tasks 2]

The set is `benchmarks/curate_labels/labels.jsonl`: real files of this machine (the standard library,
the installed packages with their C/C++ headers, npm's own packages, /usr/include, examples under
/usr/share/doc, the JDK's sources) named by root and path with their SHA-256, and planted defects
made here, deterministically, from real files (truncated mid-construct, secrets inserted, generator
headers prepended, minified, vendored copies, benchmark solutions pasted). Each line says keep or
drop, the reason, and why. `repos.jsonl` says how the files are arranged into repositories and which
license each repository declares (the distribution's metadata, the package's license file, or the
SPDX id of the Debian copyright file).

The script builds that corpus in a temporary directory, runs `codemill curate` on it in a child
process (with `--src`, the `src/` of another checkout comes first on its PYTHONPATH, so the code as
it was can be measured against the same labels), and reads `drops.parquet` and the kept shards:

* precision per drop reason: of the labelled files dropped for reason R, the share labelled drop
  (and the share whose labelled reason is of R's family);
* per language: labelled-keep files kept, labelled-drop files dropped;
* recall on planted defects per kind, and on every labelled drop;
* PII: every replacement in a kept file, aligned with the text it replaced; those of text the labels
  do not name as personal data or a secret are false, those on license boilerplate lines are counted
  apart; a redacted file that parsed before and not after (Python's ast, tree-sitter's error nodes
  for the others) or whose line count changed is damaged; recall of the labelled PII and of the
  planted secrets.

A real file that is missing or whose SHA-256 changed is left out and counted (`missing`, `changed`).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABELS = HERE / "curate_labels"
CHECKOUT = HERE.parent
PURELIB = Path(sysconfig.get_paths()["purelib"])
ROOTS = {
    "stdlib": Path(sysconfig.get_paths()["stdlib"]),
    "site-packages": PURELIB,
    "npm": Path("/usr/lib/node_modules"),
    "usr-include": Path("/usr/include"),
    "usr-share": Path("/usr/share"),
    "jdk": Path("/usr/lib/jvm/temurin-25-jdk-amd64/lib/src.zip"),
}
TAG = re.compile(r"<(NAME|EMAIL|KEY|PASSWORD|IP_ADDRESS|USERNAME)>")
# lines of license texts (not the copyright holders' names): nothing on them is personal data
BOILERPLATE = re.compile(
    r"COPYRIGHT HOLDER|HOLDERS AND CONTRIBUTORS|BE LIABLE|WITHOUT WARRANT|MERCHANTABILITY"
    r"|Permission is hereby granted|Licensed under the|Redistribution and use|THE SOFTWARE IS PROVIDED"
    r"|ALTER OR REMOVE COPYRIGHT|NOTICES OR THIS FILE HEADER|PROVIDED BY THE COPYRIGHT",
    re.I,
)
# drop reasons that name the same judgement: a drop for one where the label says another agrees
FAMILIES = {
    "exact_duplicate": "duplicate",
    "near_duplicate": "duplicate",
    "syntax_error": "syntax",
    "parse_timeout": "syntax",
    "long_line": "shape",
    "minified": "shape",
    "encoded_data": "shape",
    "not_permissive": "license",
    "unknown_license": "license",
    "too_large": "size",
    "too_many_lines": "size",
}
MIT = (
    "MIT License\n\nCopyright (c) 2024 The codemill labelled-set authors\n\nPermission is hereby granted, "
    "free of charge, to any person obtaining a copy of this software and associated documentation files "
    '(the "Software"), to deal in the Software without restriction, including without limitation the '
    "rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the "
    "Software, and to permit persons to whom the Software is furnished to do so, subject to the following "
    "conditions:\n\nThe above copyright notice and this permission notice shall be included in all copies "
    'or substantial portions of the Software.\n\nTHE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY '
    "KIND, EXPRESS OR IMPLIED.\n"
)
GPL = (
    "GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n\nThis program is free software: you can "
    "redistribute it and/or modify it under the terms of the GNU General Public License as published by "
    "the Free Software Foundation, either version 3 of the License, or (at your option) any later "
    "version.\n"
)
LICENSE_TEXTS = {"MIT": MIT, "GPL-3.0": GPL}


def family(reason: str | None) -> str | None:
    if reason is None:
        return None
    if reason.startswith(("bug:", "vulnerability:")):
        return "static"
    return FAMILIES.get(reason, reason)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- reading real files and making planted ones --------------------------------------------------


def read_real(root: str, path: str, roots: dict[str, Path]) -> bytes | None:
    base = roots.get(root)
    if base is None:
        return None
    try:
        if base.suffix == ".zip":
            with zipfile.ZipFile(base) as z:
                return z.read(path)
        return (base / path).read_bytes()
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def _source(spec: dict, roots: dict[str, Path]) -> str:
    data = read_real(spec["root"], spec["path"], roots)
    if data is None:
        raise FileNotFoundError(f"{spec['root']}:{spec['path']}")
    if spec.get("sha256") and hashlib.sha256(data).hexdigest() != spec["sha256"]:
        raise ValueError(f"{spec['root']}:{spec['path']} changed (SHA-256)")
    return data.decode("utf-8")


def _comment(path: str) -> str:
    return "#" if path.endswith((".py", ".pyi", ".sh", ".rb")) else "//"


def truncate(text: str, at: float) -> str:
    """The file cut inside a construct: after the first "(" on the first line from `at` of the way
    down that opens one (a call or signature left open, so the rest of the file is missing)."""
    lines = text.splitlines(keepends=True)
    for i in range(int(len(lines) * at), len(lines)):
        s = lines[i].lstrip()
        if "(" in s and not s.startswith(("#", "//", "*", "/*")):
            return "".join(lines[:i]) + lines[i][: lines[i].index("(") + 1] + "\n"
    raise ValueError("no line to cut at")


def near_copy(text: str, comment: str) -> str:
    """The same file with a few lines edited (word 5-gram Jaccard stays above 0.85)."""
    lines = text.splitlines()
    for i in range(10, len(lines), max(1, len(lines) // 4)):
        if lines[i].strip() and not lines[i].rstrip().endswith("\\"):
            lines[i] = lines[i] + f"  {comment} vendored: edited"
    return "\n".join(lines) + "\n"


def minify(text: str, width: int = 700) -> str:
    """JavaScript squeezed the way bundlers emit it: comments and indentation gone, statements joined
    into long lines (below the 1,000-character line limit, so only the minified check can see it)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    parts = [s.strip() for s in text.splitlines()]
    parts = [s for s in parts if s and not s.startswith("//")]
    out, line = [], ""
    for s in parts:
        if line and len(line) + len(s) + 1 > width:
            out.append(line)
            line = ""
        line = f"{line} {s}" if line else s
    out.append(line)
    return "\n".join(out) + "\n"


SECRET_TAGS = {
    "aws_key_id": "KEY", "aws_secret": "KEY", "gh_token": "KEY", "slack": "KEY", "stripe": "KEY",
    "pem_rsa": "KEY", "pem_ec": "KEY", "pem_openssh": "KEY", "password": "PASSWORD", "db_user": "USERNAME",
}  # fmt: skip
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
ALNUM = B64[:62]


def secret(kind: str, seed: str) -> str:
    """A secret of a real format, made from a seed (so none is written into this repository: push
    protection and secret scanners would rightly object)."""
    import random

    rng = random.Random(hashlib.sha256(f"{seed}:{kind}".encode()).digest())
    pick = lambda alphabet, n: "".join(rng.choice(alphabet) for _ in range(n))  # noqa: E731
    if kind == "aws_key_id":
        return "AKIA" + pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
    if kind == "aws_secret":
        return pick(B64, 40)
    if kind == "gh_token":
        return "ghp_" + pick(ALNUM, 36)
    if kind == "slack":
        return f"xoxb-{pick('0123456789', 12)}-{pick('0123456789', 13)}-{pick(ALNUM, 24)}"
    if kind == "stripe":
        return "sk_" + "live_" + pick(ALNUM, 24)
    if kind.startswith("pem_"):
        n = {"pem_rsa": 25, "pem_ec": 3, "pem_openssh": 6}[kind]
        body = [pick(B64, 64) for _ in range(n)] + [pick(B64, 20) + "=="]
        return "\n".join(body)
    if kind == "password":
        return pick(ALNUM, 14)
    if kind == "db_user":
        return "svc_" + pick("abcdefghijklmnopqrstuvwxyz", 7)
    raise ValueError(f"unknown secret kind {kind!r}")


PLACEHOLDER = re.compile(r"\{(secret|pii):([A-Za-z_]+)(?::([^}]*))?\}")


def fill(text: str, seed: str) -> tuple[str, list[tuple[str, str]]]:
    """The recipe text with its placeholders filled: {secret:KIND} by a made secret, {pii:TAG:value}
    by the value; and the (value, tag) pairs the PII stage should replace."""
    found = []

    def sub(m):
        value = secret(m.group(2), seed) if m.group(1) == "secret" else m.group(3)
        found.append((value, SECRET_TAGS[m.group(2)] if m.group(1) == "secret" else m.group(2)))
        return value

    return PLACEHOLDER.sub(sub, text), found


def make_planted(recipe: dict, roots: dict[str, Path], path: str) -> tuple[str, list[tuple[str, str]]]:
    """A planted file's text from its recipe (labels.jsonl `make`), and the secrets planted in it."""
    kind = recipe["kind"]
    extra, planted = fill(recipe.get("text", ""), path)
    if kind == "text":
        return extra, planted
    text = _source(recipe["from"], roots)
    if kind == "copy":
        return text, planted
    if kind == "truncate":
        return truncate(text, recipe["at"]), planted
    if kind == "near_copy":
        return near_copy(text, _comment(path)), planted
    if kind == "prepend":
        return extra + text, planted
    if kind == "append":
        return text.rstrip("\n") + "\n\n\n" + extra, planted
    if kind == "insert":
        lines = text.splitlines(keepends=True)
        return "".join(lines[: recipe["line"]]) + extra + "".join(lines[recipe["line"] :]), planted
    if kind == "replace":
        if recipe["old"] not in text:
            raise ValueError(f"{path}: {recipe['old']!r} not in its source")
        return text.replace(recipe["old"], recipe["new"], 1), planted
    if kind == "minify":
        return minify(text), planted
    raise ValueError(f"unknown recipe kind {kind!r}")


def resolve_pii(items: list[dict], text: str) -> list[dict]:
    """Labelled PII with its text: secrets are labelled by SHA-256 and line (not written here)."""
    out = []
    lines = text.splitlines()
    for p in items:
        if "text" in p:
            out.append(p)
            continue
        line = lines[p["line"] - 1] if 0 < p["line"] <= len(lines) else ""
        for tok in re.findall(r"[\w\-./+=:]+", line):
            if hashlib.sha256(tok.encode()).hexdigest() == p["sha256"]:
                out.append({"text": tok, "tag": p["tag"]})
                break
    return out


# -- building the labelled corpus ----------------------------------------------------------------


def select(labels: list[dict], limit: int | None) -> list[dict]:
    """A deterministic subset of `limit` lines (by a hash of the path), with their groups whole."""
    if not limit or limit >= len(labels):
        return labels
    key = lambda e: hashlib.sha256(f"{e['root']}:{e['path']}".encode()).hexdigest()  # noqa: E731
    chosen = sorted(labels, key=key)[:limit]
    groups = {e["group"] for e in chosen if e.get("group")}
    names = {(e["root"], e["path"]) for e in chosen}
    return [e for e in labels if (e["root"], e["path"]) in names or (e.get("group") in groups)]


def in_repo(entry: dict, repo: dict) -> str:
    base = repo.get("base", "")
    return entry["path"][len(base) + 1 :] if base else entry["path"]


def build(labels: list[dict], repos: dict[str, dict], out: Path, roots: dict[str, Path]) -> dict:
    """The corpus directory (one folder per repository); returns what was built and left out."""
    built: dict[tuple[str, str], dict] = {}
    left = {"missing": [], "changed": []}
    used = {e["repo"] for e in labels}
    for name in sorted(used):
        repo = repos[name]
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        lic = repo.get("license") or {}
        if "metadata" in lic:
            (d / ".codemill-repo.json").write_text(json.dumps({"license": lic["metadata"]}))
        elif "file" in lic:
            data = read_real(repo["root"], lic["file"], roots)
            if data is not None:
                (d / "LICENSE").write_bytes(data)
        elif "text" in lic:
            (d / "LICENSE").write_text(LICENSE_TEXTS[lic["text"]])
    for e in labels:
        repo = repos[e["repo"]]
        rel = in_repo(e, repo)
        if e["root"] == "planted":
            try:
                text, planted = make_planted(e["make"], roots, e["path"])
                data = text.encode("utf-8")
                e = {**e, "pii": (e.get("pii") or []) + [{"text": v, "tag": t} for v, t in planted],
                     "planted_pii": [v for v, _ in planted]}  # fmt: skip
            except FileNotFoundError:
                left["missing"].append(e["path"])
                continue
            except ValueError:
                left["changed"].append(e["path"])
                continue
        else:
            data = read_real(e["root"], e["path"], roots)
            if data is None:
                left["missing"].append(f"{e['root']}:{e['path']}")
                continue
            if hashlib.sha256(data).hexdigest() != e["sha256"]:
                left["changed"].append(f"{e['root']}:{e['path']}")
                continue
        dest = out / e["repo"] / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        content = data.decode("utf-8", "replace")
        built[(e["repo"], rel)] = {**e, "content": content, "pii": resolve_pii(e.get("pii") or [], content)}
    return {"files": built, **left}


def run_curate(src: Path, corpus: Path, out: Path, tasks: int, log: Path) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src / "src"), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "codemill.cli", "curate", str(corpus), "--out", str(out)]
    cmd += ["--set", f"tasks={tasks}", "--set", "workers=2"]
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=src, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"codemill curate failed ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return time.time() - t0


def revision(src: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- measuring -----------------------------------------------------------------------------------


def replacements(before: str, after: str) -> list[tuple[str | None, str, str]]:
    """(replaced text or None when it cannot be aligned, tag, the original line) per tag in `after`
    that is not in `before`: the changed line blocks, each matched as literal text between tags."""
    import difflib

    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        old, new = "".join(a[i1:i2]), "".join(b[j1:j2])
        parts = TAG.split(new)
        lits, tags = parts[0::2], parts[1::2]
        if not tags:
            continue
        pattern = "".join(re.escape(s) + ("(.+?)" if k < len(tags) else "") for k, s in enumerate(lits))
        m = re.fullmatch(pattern, old, re.S)
        if m is None:  # a redaction that kept the line count moved newlines out of what it replaced
            loose = ["\\s*".join(re.escape(w) for w in re.split(r"\s+", s)) for s in lits]
            m = re.fullmatch(
                "".join(s + ("(.+?)" if k < len(tags) else "") for k, s in enumerate(loose)), old, re.S
            )
        for k, tag in enumerate(tags):
            if m is None:
                out.append((None, tag, old[:300]))
                continue
            start = old.rfind("\n", 0, m.start(k + 1)) + 1
            end = old.find("\n", m.end(k + 1))
            out.append((m.group(k + 1).strip(), tag, old[start : end if end >= 0 else len(old)]))
    return [r for r in out if r[0] is None or TAG.fullmatch(r[0]) is None]


def error_nodes(lang: str, path: str, text: str) -> int | None:
    """How much of a file its parser rejects: 1/0 for Python (ast), ERROR and MISSING nodes for a
    tree-sitter language (.h: the fewer of C and C++), None without a parser."""
    if lang == "Python":
        try:
            ast.parse(text)
            return 0
        except (SyntaxError, ValueError):
            return 1
    from codemill.langs import ts_parser

    counts = []
    for name in (lang, "C++") if lang == "C" and path.endswith(".h") else (lang,):
        parser = ts_parser(name)
        if parser is None:
            continue
        tree = parser.parse(text.encode("utf-8"))
        n, stack = 0, [tree.root_node]
        while stack:
            node = stack.pop()
            if node.is_error or node.is_missing:
                n += 1
            if node.has_error:
                stack.extend(node.children)
        counts.append(n)
    return min(counts) if counts else None


def ratio(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def measure(built: dict, corpus: Path) -> dict:
    import pyarrow.parquet as pq

    files = built["files"]
    drops = {(r["repo"], r["path"]): r for r in pq.read_table(corpus / "drops.parquet").to_pylist()}
    kept = {}
    for p in sorted(corpus.glob("files-*.parquet")):
        for r in pq.read_table(p, columns=["repo", "path", "content", "pii"]).to_pylist():
            kept[(r["repo"], r["path"])] = r
    outcome = {}
    for key in files:
        if key in kept:
            outcome[key] = ("kept", None, None)
        elif key in drops:
            outcome[key] = ("dropped", drops[key]["reason"], drops[key]["stage"])
        else:
            outcome[key] = ("lost", None, None)

    per_reason: dict[str, Counter] = defaultdict(Counter)
    per_lang: dict[str, Counter] = defaultdict(Counter)
    recall: dict[str, Counter] = defaultdict(Counter)
    recall_planted: dict[str, Counter] = defaultdict(Counter)
    wrong_drops, missed = [], []
    for key, e in files.items():
        state, reason, stage = outcome[key]
        lang = e.get("lang") or "?"
        lab, lab_reason = e["label"], e.get("reason")
        pl = per_lang[lang]
        pl["files"] += 1
        pl[f"label_{lab}"] += 1
        if state == "dropped":
            r = per_reason[reason]
            r["dropped"] += 1
            r["stage:" + stage] += 1
            r["labelled_drop"] += lab == "drop"
            r["same_family"] += lab == "drop" and family(lab_reason) == family(reason)
            pl["dropped"] += 1
            pl["dropped_labelled_drop"] += lab == "drop"
            if lab == "keep":
                wrong_drops.append({"repo": key[0], "path": key[1], "reason": reason, "lang": lang,
                                    "why_keep": e.get("why")})  # fmt: skip
        if lab == "keep":
            pl["keep_kept"] += state == "kept"
        else:
            fam = family(lab_reason)
            for table in (recall, recall_planted) if e["root"] == "planted" else (recall,):
                c = table[fam]
                c["files"] += 1
                c["dropped"] += state == "dropped"
                c["right_reason"] += state == "dropped" and family(reason) == fam
            pl["drop_dropped"] += state == "dropped"
            if state != "dropped":
                missed.append({"repo": key[0], "path": key[1], "expected": lab_reason, "lang": lang,
                               "planted": e["root"] == "planted"})  # fmt: skip

    reasons = {
        r: {
            "dropped": c["dropped"],
            "labelled_drop": c["labelled_drop"],
            "precision": ratio(c["labelled_drop"], c["dropped"]),
            "same_family": ratio(c["same_family"], c["dropped"]),
            "stage": next(k.split(":", 1)[1] for k in c if k.startswith("stage:")),
        }
        for r, c in sorted(per_reason.items(), key=lambda kv: -kv[1]["dropped"])
    }
    langs = {
        lang: {
            "files": c["files"],
            "labelled_keep": c["label_keep"],
            "keep_kept": ratio(c["keep_kept"], c["label_keep"]),
            "labelled_drop": c["label_drop"],
            "drop_recall": ratio(c["drop_dropped"], c["label_drop"]),
            "dropped": c["dropped"],
            "drop_precision": ratio(c["dropped_labelled_drop"], c["dropped"]),
        }
        for lang, c in sorted(per_lang.items(), key=lambda kv: -kv[1]["files"])
    }

    def rec(table):
        return {
            f: {
                "files": c["files"],
                "recall": ratio(c["dropped"], c["files"]),
                "right_reason": ratio(c["right_reason"], c["files"]),
            }
            for f, c in sorted(table.items())
        }

    cxx = [k for k, e in files.items() if e.get("lang") in ("C", "C++") and e["label"] == "keep"]
    cxx_syntax = [k for k in cxx if family(outcome[k][1]) == "syntax"]
    counts = Counter(o[0] for o in outcome.values())
    return {
        "files": len(files),
        "kept": counts["kept"],
        "dropped": counts["dropped"],
        "lost": counts["lost"],
        "labelled_keep_kept": ratio(
            sum(outcome[k][0] == "kept" for k, e in files.items() if e["label"] == "keep"),
            sum(e["label"] == "keep" for e in files.values()),
        ),
        "per_reason": reasons,
        "per_language": langs,
        "recall_planted": rec(recall_planted),
        "recall_all_labelled_drops": rec(recall),
        "cxx_wellformed_lost_to_syntax": {
            "files": len(cxx),
            "lost": len(cxx_syntax),
            "rate": ratio(len(cxx_syntax), len(cxx)),
        },
        "pii": measure_pii(files, kept),
        "wrong_drops": sorted(wrong_drops, key=lambda d: (d["reason"], d["repo"], d["path"])),
        "missed_drops": sorted(missed, key=lambda d: (str(d["expected"]), d["repo"], d["path"])),
    }


def measure_pii(files: dict, kept: dict) -> dict:
    reps = Counter()
    false, boiler, unaligned = Counter(), Counter(), 0
    damaged_parse, damaged_lines, redacted_files = [], [], 0
    examples = []
    labelled = recalled = 0
    planted = Counter()
    planted_found = Counter()
    for key, e in files.items():
        row = kept.get(key)
        personal = {(p["text"], p["tag"]) for p in e.get("pii") or ()}
        texts = {t for t, _ in personal}
        if row is None:
            continue
        before, after = e["content"], row["content"]
        for text, tag in personal:
            labelled += 1
            recalled += text not in after
            if e["root"] == "planted" and text in (e.get("planted_pii") or ()):
                planted[tag] += 1
                planted_found[tag] += text not in after
        if not row["pii"]:
            continue
        redacted_files += 1
        for text, tag, line in replacements(before, after):
            reps[tag] += 1
            if text is None:
                unaligned += 1
                false[tag] += 1
                continue
            if BOILERPLATE.search(line):
                boiler[tag] += 1
            if text not in texts and not any(text in t or t in text for t in texts if len(t) >= 4):
                false[tag] += 1
                if len(examples) < 400:
                    examples.append({"repo": key[0], "path": key[1], "tag": tag, "text": text[:80],
                                     "line": line.strip()[:160]})  # fmt: skip
        if before.count("\n") != after.count("\n"):
            damaged_lines.append(f"{key[0]}/{key[1]}")
        eb = error_nodes(e.get("lang") or "", key[1], before)
        if eb is not None and (error_nodes(e.get("lang") or "", key[1], after) or 0) > eb:
            damaged_parse.append(f"{key[0]}/{key[1]}")
    total = sum(reps.values())
    nfalse = sum(false.values())
    return {
        "redacted_files": redacted_files,
        "replacements": dict(reps),
        "replacements_total": total,
        "false_replacements": dict(false),
        "false_rate": ratio(nfalse, total),
        "boilerplate_replacements": sum(boiler.values()),
        "unaligned": unaligned,
        "files_parse_broken": damaged_parse,
        "files_lines_changed": damaged_lines,
        "damaged_file_rate": ratio(len(set(damaged_parse) | set(damaged_lines)), redacted_files),
        "labelled_pii": labelled,
        "labelled_pii_recall": ratio(recalled, labelled),
        "planted_secrets": {
            t: {"planted": n, "recall": ratio(planted_found[t], n)} for t, n in sorted(planted.items())
        },
        "false_examples": examples,
    }


# -- reporting -----------------------------------------------------------------------------------


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def report(res: dict, console) -> None:
    from rich.table import Table

    m = res["metrics"]
    console.print(
        f"[bold]curate_quality[/bold] src {res['src']} ({res['revision']}): {m['files']} labelled files "
        f"({res['left_out']} left out), {m['kept']} kept, {m['dropped']} dropped, {m['lost']} unaccounted; "
        f"curate {res['curate_seconds']:.0f} s"
    )
    t = Table(title="drops per reason: precision = labelled drop / dropped", title_justify="left")
    for col in ("reason", "stage", "dropped", "labelled drop", "precision", "same family"):
        t.add_column(col, justify="left" if col in ("reason", "stage") else "right")
    for r, c in m["per_reason"].items():
        style = "red" if c["precision"] is not None and c["precision"] < 0.95 else None
        t.add_row(r, c["stage"], str(c["dropped"]), str(c["labelled_drop"]), fmt(c["precision"]),
                  fmt(c["same_family"]), style=style)  # fmt: skip
    console.print(t)
    t = Table(title="per language", title_justify="left")
    for col in ("language", "files", "label keep", "keep kept", "label drop", "drop recall", "dropped",
                "drop precision"):  # fmt: skip
        t.add_column(col, justify="left" if col == "language" else "right")
    for lang, c in m["per_language"].items():
        t.add_row(lang, *(fmt(c[k]) for k in ("files", "labelled_keep", "keep_kept", "labelled_drop",
                                              "drop_recall", "dropped", "drop_precision")))  # fmt: skip
    console.print(t)
    t = Table(title="recall per defect kind (label reason family)", title_justify="left")
    for col in ("kind", "planted", "recall", "right reason", "all labelled", "recall ", "right reason "):
        t.add_column(col, justify="left" if col == "kind" else "right")
    allr = m["recall_all_labelled_drops"]
    for kind in sorted(set(allr) | set(m["recall_planted"])):
        p = m["recall_planted"].get(kind, {})
        a = allr.get(kind, {})
        t.add_row(kind, fmt(p.get("files")), fmt(p.get("recall")), fmt(p.get("right_reason")),
                  fmt(a.get("files")), fmt(a.get("recall")), fmt(a.get("right_reason")))  # fmt: skip
    console.print(t)
    c = m["cxx_wellformed_lost_to_syntax"]
    console.print(
        f"C/C++ labelled keep lost to the syntax check: {c['lost']}/{c['files']} ({fmt(c['rate'])})"
    )
    p = m["pii"]
    console.print(
        f"PII: {p['replacements_total']} replacements in {p['redacted_files']} kept files {p['replacements']}; "
        f"false (not personal data nor a secret) {sum(p['false_replacements'].values())} "
        f"= {fmt(p['false_rate'])} {p['false_replacements']}; on license boilerplate "
        f"{p['boilerplate_replacements']}; unaligned {p['unaligned']}; files whose parse broke "
        f"{len(p['files_parse_broken'])}, whose line count changed {len(p['files_lines_changed'])} "
        f"(damaged {fmt(p['damaged_file_rate'])} of redacted files); labelled PII recall "
        f"{fmt(p['labelled_pii_recall'])} of {p['labelled_pii']}; planted secrets {p['planted_secrets']}"
    )
    if m["wrong_drops"]:
        console.print(f"[bold]labelled keep but dropped[/bold] ({len(m['wrong_drops'])}):")
        for d in m["wrong_drops"][: res["show"]]:
            console.print(f"  {d['reason']:<22} {d['repo']}/{d['path']}", highlight=False)
    if m["missed_drops"]:
        console.print(f"[bold]labelled drop but kept[/bold] ({len(m['missed_drops'])}):")
        for d in m["missed_drops"][: res["show"]]:
            console.print(f"  {d['expected']!s:<22} {d['repo']}/{d['path']}", highlight=False)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=CHECKOUT, help="checkout whose src/ is curated with")
    ap.add_argument("--labels", type=Path, default=LABELS, help="folder with labels.jsonl and repos.jsonl")
    ap.add_argument("--limit", type=int, default=None, help="a deterministic subset of this many lines")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--work", type=Path, default=None, help="build and curate here (kept afterwards)")
    ap.add_argument("--show", type=int, default=40, help="wrong drops and missed drops listed")
    ap.add_argument("--root", action="append", default=[], help="NAME=PATH: where a root is on this machine")
    args = ap.parse_args(argv)
    roots = dict(ROOTS)
    for item in args.root:
        name, _, path = item.partition("=")
        roots[name] = Path(path)
    src = args.src.resolve()
    if not (src / "src" / "codemill").is_dir():
        raise SystemExit(f"--src {src}: no src/codemill there")
    labels = select(read_jsonl(args.labels / "labels.jsonl"), args.limit)
    repos = {r["repo"]: r for r in read_jsonl(args.labels / "repos.jsonl")}
    work = args.work or Path(tempfile.mkdtemp(prefix="curate-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus_in, corpus = work / "repos", work / "corpus"
        for d in (corpus_in, corpus):
            shutil.rmtree(d, ignore_errors=True)
        built = build(labels, repos, corpus_in, roots)
        seconds = run_curate(src, corpus_in, corpus, args.tasks, work / "curate.log")
        metrics = measure(built, corpus)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    res = {
        "src": str(src),
        "revision": revision(src),
        "labels": len(labels),
        "left_out": len(built["missing"]) + len(built["changed"]),
        "missing": built["missing"],
        "changed": built["changed"],
        "curate_seconds": round(seconds, 1),
        "tasks": args.tasks,
        "show": args.show,
        "metrics": metrics,
    }
    from rich.console import Console

    report(res, Console(width=160) if not sys.stdout.isatty() else Console())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
