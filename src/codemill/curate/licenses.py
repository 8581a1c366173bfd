"""Licenses: a repository's from metadata first, else its license files classified with ScanCode;
a file's own from its head.

The permissive list is data (`data/licenses.json`): the Blue Oak Council list by tier and The Stack's
list, each with its source and date. ScanCode is the well-kept classifier; its index loads once per
process (about 5 s) and only when a repository has no usable metadata, and verdicts are cached by
the SHA-256 of the license text, in memory and in `$CODEMILL_CACHE/licenses`.

A file decides for itself when its head says so (`file_license`): an `SPDX-License-Identifier:`
line, else license notices (Apache's "Licensed under the Apache License, Version 2.0", MIT's
"Permission is hereby granted, free of charge", BSD's "Redistribution and use in source and binary
forms", the GPL's, ...). Otherwise the repository's expression applies, read for code
(`code_license`): the data and font licenses of an AND cover the data and fonts a package bundles
(ScanCode's `Apache-2.0 AND CC-BY-4.0`: its license texts), and a ScanCode reference that is an
SPDX license plus a note reads as that license (`LicenseRef-scancode-protobuf`: BSD-3-Clause).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from functools import cache, lru_cache
from importlib import resources
from importlib.metadata import version

import hyperscan
from license_expression import ExpressionError, LicenseSymbol, get_spdx_licensing

from codemill.cache import cache_dir
from codemill.curate import vectorscan
from codemill.curate.config import CurateConfig

LICENSE_FILE = re.compile(
    r"^(un)?licen[cs]e|^copying|^copyright|^notice|^legal|^mit-license|^apache-license",
    re.I,
)

# Trove classifiers and free-text License fields that map to one SPDX id.
_NAMES = {
    "mit": "MIT",
    "mit license": "MIT",
    "mit-0": "MIT-0",
    "apache": "Apache-2.0",
    "apache 2": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache-2": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "apache software license 2.0": "Apache-2.0",
    "bsd": "BSD-3-Clause",
    "bsd license": "BSD-3-Clause",
    "new bsd": "BSD-3-Clause",
    "new bsd license": "BSD-3-Clause",
    "3-clause bsd": "BSD-3-Clause",
    "bsd 3-clause": "BSD-3-Clause",
    "bsd-3": "BSD-3-Clause",
    "simplified bsd": "BSD-2-Clause",
    "bsd 2-clause": "BSD-2-Clause",
    "isc license": "ISC",
    "isc license (iscl)": "ISC",
    "python software foundation license": "PSF-2.0",
    "psf": "PSF-2.0",
    "psfl": "PSF-2.0",
    "the unlicense (unlicense)": "Unlicense",
    "public domain": "Unlicense",
    "cc0 1.0 universal (cc0 1.0) public domain dedication": "CC0-1.0",
    "zope public license": "ZPL-2.1",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "gnu general public license v2 (gplv2)": "GPL-2.0-only",
    "gnu general public license v2 or later (gplv2+)": "GPL-2.0-or-later",
    "gnu general public license v3 (gplv3)": "GPL-3.0-only",
    "gnu general public license v3 or later (gplv3+)": "GPL-3.0-or-later",
    "gnu lesser general public license v2 (lgplv2)": "LGPL-2.0-only",
    "gnu lesser general public license v2 or later (lgplv2+)": "LGPL-2.0-or-later",
    "gnu lesser general public license v3 (lgplv3)": "LGPL-3.0-only",
    "gnu lesser general public license v3 or later (lgplv3+)": "LGPL-3.0-or-later",
    "gnu library or lesser general public license (lgpl)": "LGPL-2.0-or-later",
    "gnu affero general public license v3": "AGPL-3.0-only",
    "gnu affero general public license v3 or later (agplv3+)": "AGPL-3.0-or-later",
    "eclipse public license 2.0 (epl-2.0)": "EPL-2.0",
    "historical permission notice and disclaimer (hpnd)": "HPND",
    "boost software license 1.0 (bsl-1.0)": "BSL-1.0",
    "universal permissive license (upl)": "UPL-1.0",
    "the unlicense": "Unlicense",
    "3-clause bsd license": "BSD-3-Clause",  # protobuf's License field
    "bsd 3-clause license": "BSD-3-Clause",
    "bsd 3 clause": "BSD-3-Clause",
    "modified bsd": "BSD-3-Clause",
    "2-clause bsd license": "BSD-2-Clause",
    "bsd 2 clause": "BSD-2-Clause",
    "apache 2.0 license": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0",
    "apache2": "Apache-2.0",
    "apache2.0": "Apache-2.0",
    "the mit license": "MIT",
    "isc": "ISC",
}


@cache
def _data() -> dict:
    return json.loads(resources.files("codemill.curate").joinpath("data/licenses.json").read_text())


@cache
def permissive_ids(tiers: tuple[str, ...], stack_list: bool) -> frozenset[str]:
    data = _data()
    ids = {i for t in tiers for i in data["blueoak"]["tiers"].get(t, [])}
    if stack_list:
        removed = set(data["stack"]["weak_copyleft_removed_in_v1_1"])
        ids |= set(data["stack"]["permissive"]) - removed
    ids |= set(data["code_reading"]["public_domain"]["ids"])
    return frozenset(i.lower() for i in ids)


@cache
def _licensing():
    """Built once per process: building it takes ~50 ms, and every repository asks."""
    return get_spdx_licensing()


def normalize(text: str | None) -> str | None:
    """An SPDX expression from a metadata string ('MIT', 'Apache 2.0', 'MIT OR Apache-2.0')."""
    if not text:
        return None
    text = text.strip()
    if "\n" in text or len(text) > 200:  # a whole license text in the License field
        return classify_text(text)
    key = text.lower().rstrip(".")
    name = _NAMES.get(key) or _NAMES.get(key.removesuffix(" license"))
    if name:
        return name
    try:
        expr = _licensing().parse(text, validate=True, strict=False)
    except ExpressionError:
        return None
    return str(expr) if expr is not None else None


def from_classifiers(classifiers: list[str]) -> str | None:
    ids = []
    for c in classifiers:
        if c.startswith("License ::"):
            spdx = _NAMES.get(c.split("::")[-1].strip().lower())
            if spdx and spdx not in ids:
                ids.append(spdx)
    return " OR ".join(ids) if ids else None


def is_permissive(expression: str | None, cfg: CurateConfig) -> bool:
    """OR: any branch permissive; AND: every part; WITH: the base license decides."""
    if not expression:
        return False
    return _permissive(expression, tuple(cfg.blueoak_tiers), cfg.stack_list)


@lru_cache(maxsize=4096)
def _permissive(expression: str, tiers: tuple[str, ...], stack_list: bool) -> bool:
    """is_permissive, kept per expression: files ask it for a few expressions again and again."""
    allowed = permissive_ids(tiers, stack_list)
    try:
        expr = _licensing().parse(expression, validate=False)
    except ExpressionError:
        return False

    def ok(node) -> bool:
        node = getattr(node, "license_symbol", node)  # X WITH exception: X decides
        if isinstance(node, LicenseSymbol):
            return node.key.lower() in allowed
        name = type(node).__name__
        if name == "OR":
            return any(ok(a) for a in node.args)
        if name == "AND":
            return all(ok(a) for a in node.args)
        return False

    return ok(expr)


# -- reading an expression for code ---------------------------------------------------------


def code_license(expression: str | None) -> str | None:
    """The expression as it applies to code files: content-only licenses (data/licenses.json
    `code_reading`) left out of an AND where something else remains, and ScanCode references that
    are an SPDX license plus a note replaced by that license. `MIT AND CC-BY-4.0` -> `MIT`;
    `CC-BY-4.0` alone stays (nothing says which license the code has)."""
    if not expression:
        return expression
    reading = _data()["code_reading"]
    content = {i.lower() for i in reading["content_only"]["ids"]}
    try:
        expr = _licensing().parse(expression, validate=False)
    except ExpressionError:
        return expression

    def key(node) -> str:
        return getattr(getattr(node, "license_symbol", node), "key", "").lower()

    def read(node, top: bool = False) -> str:
        name = type(node).__name__
        if name not in ("AND", "OR"):
            return code_equivalent(str(node)) or str(node)
        args = list(node.args)
        if name == "AND" and any(key(a) not in content for a in args):
            args = [a for a in args if key(a) not in content]
        text = f" {name} ".join(read(a) for a in args)
        return text if top or len(args) == 1 else f"({text})"

    return read(expr, top=True)


def code_equivalent(expression: str | None) -> str | None:
    """A ScanCode reference that is an SPDX license plus a note, as that license (protobuf's)."""
    table = _data()["code_reading"]["scancode_equivalents"]["map"]
    return table.get(expression, expression) if expression else expression


# -- a file's own license ---------------------------------------------------------------------

HEAD_BYTES = 4096  # where an SPDX line is looked for
NOTICE_BYTES = 2048  # where a notice is: a header's first sentences
SPDX_LINE = re.compile(rb"SPDX-License-Identifier:[ \t]*([^\n\r]+)")
# what may follow the expression on its line: comment ends, quotes and a comment box's right edge
# (LLVM's `|* SPDX-License-Identifier: Apache-2.0 WITH LLVM-exception   *|`)
_SPDX_TAIL = re.compile(r"""(\s|\*/|-->|\*\)|"{3}|'{3}|[;,"'*|#/])*$""")
# on the head lowercased, comment characters and line breaks collapsed to single spaces
_NOTICES: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(p), spdx)
    for p, spdx in (
        (r"under the apache license,? version 2\.0", "Apache-2.0"),
        (r"permission is hereby granted, free of charge, to any person obtaining a copy", "MIT"),
        (r"(licensed|released|distributed) under the (terms of the )?mit licen[cs]e", "MIT"),
        (r"governed by an mit-style license", "MIT"),
        (r"redistribution and use in source and binary forms, with or without modification, are permitted", "BSD"),
        (r"governed by a bsd-style license", "BSD-3-Clause"),
        (r"permission to use, copy, modify, and(/or)? distribute this software for any purpose with or without fee", "ISC"),
        (r"subject to the terms of the mozilla public license,? v(ersion)?\.? ?2\.0", "MPL-2.0"),
        (r"gnu affero general public license", "AGPL"),
        (r"gnu (lesser|library) general public license", "LGPL"),
        (r"(terms|under) of the gnu general public license|gnu general public license as published", "GPL"),
    )
)  # fmt: skip
# pieces every notice above holds, short enough that no line break splits them: a head without any
# is not read further (most files)
_NOTICE_HINTS = (
    b"icensed",
    b"ermission is hereby",
    b"ermission to use",
    b"edistribution",
    b"overned by",
    b"GNU",
    b"Mozilla",
)
# comment characters, and the runs `--` and `"""`, read as spaces (a run of them collapses with the
# spaces around it): done on the bytes, where an ASCII byte decodes the same whatever it is
_COMMENT_CHARS = bytes.maketrans(b"#*/;!", b"     ")
_COMMENT_RUNS = (b"--", b'"""')
_GNU_VERSION = re.compile(r"version (\d)(\.\d)?( of the license)?(,? or \(at your option\) any later)?")


def file_license(data: bytes, cfg: CurateConfig) -> tuple[str, str] | None:
    """(expression, how it was found: "spdx" or "notice") when the file's head names its own
    license, else None.

    An SPDX line decides. Else the notices found decide when they agree on being permissive or not:
    a head with both an MIT and a GPL notice is a dual license or a note about a part, and the
    repository's license decides then."""
    head = data[:HEAD_BYTES]
    m = SPDX_LINE.search(head) if b"SPDX-License-Identifier" in head else None
    if m:
        value = _SPDX_TAIL.sub("", m.group(1).decode("utf-8", "replace")).strip()
        if value:
            return value, "spdx"
    head = head[:NOTICE_BYTES]
    hints, notices = _scanners()
    if not vectorscan.found(hints, head):
        return None
    for run in _COMMENT_RUNS:
        head = head.replace(run, b" ")
    text = " ".join(head.translate(_COMMENT_CHARS).decode("utf-8", "replace").lower().split())
    hits = vectorscan.found(notices, text.encode("utf-8"))
    if not hits:
        return None
    found = list(dict.fromkeys(_notice_id(_NOTICES[i], text) for i in sorted(hits)))
    if len({_permissive(f, tuple(cfg.blueoak_tiers), cfg.stack_list) for f in found}) > 1:
        return None
    return " AND ".join(found), "notice"


@cache
def _scanners() -> tuple[hyperscan.Database, hyperscan.Database]:
    """Vectorscan databases of the hints (literals) and of the notices (the same regular expressions,
    on the text's UTF-8: they are ASCII), built once per process. One pass each: a search per hint
    and per notice was two thirds of reading the heads."""
    notices = [p.pattern.encode("ascii") for p, _ in _NOTICES]
    return (
        vectorscan.database(_NOTICE_HINTS, hyperscan.HS_FLAG_SINGLEMATCH, literal=True),
        vectorscan.database(notices, hyperscan.HS_FLAG_SINGLEMATCH),
    )


def _notice_id(notice: tuple[re.Pattern, str], text: str) -> str:
    pattern, name = notice
    if name == "BSD":
        return "BSD-3-Clause" if "neither the name" in text else "BSD-2-Clause"
    if name not in ("GPL", "LGPL", "AGPL"):
        return name
    end = pattern.search(text).end()  # the version is read after the notice's first occurrence
    m = _GNU_VERSION.search(text, end, end + 300)
    if m is None:
        return {"GPL": "GPL-2.0-or-later", "LGPL": "LGPL-2.1-or-later", "AGPL": "AGPL-3.0-or-later"}[name]
    version = m.group(1) + (m.group(2) or (".1" if name == "LGPL" and m.group(1) == "2" else ".0"))
    return f"{name}-{version}-{'or-later' if m.group(4) else 'only'}"


# -- license texts ----------------------------------------------------------------------------

_TEXT_CACHE: dict[str, str | None] = {}


def classify_text(text: str) -> str | None:
    """SPDX expression of the license that covers most of a license text; None if none found."""
    key = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
    if key not in _TEXT_CACHE:
        found = _scancode_verdict(key, text)
        _TEXT_CACHE[key] = code_equivalent(found) if found else None
    return _TEXT_CACHE[key]


def _scancode_verdict(key: str, text: str) -> str:
    """ScanCode's expression for a text ("" for none), kept on disk per ScanCode version: loading
    its index costs each process about 5 s (a tenth of curating the installed packages on 2 cores)
    and the same license texts come back run after run. The cache is only a cache: unreadable or
    unwritable, the verdict is computed."""
    path = cache_dir("licenses") / version("scancode-toolkit-mini") / key
    with contextlib.suppress(OSError):
        return path.read_text()
    found = _scancode_classify(text)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{key}.{os.getpid()}.tmp")
        tmp.write_text(found)
        os.replace(tmp, path)
    return found


def _scancode_classify(text: str) -> str:
    from licensedcode.cache import build_spdx_license_expression, get_index

    coverage: dict[str, int] = {}
    for m in get_index().match(query_string=text):
        expr = m.rule.license_expression
        coverage[expr] = coverage.get(expr, 0) + m.len()
    coverage.pop("unknown-license-reference", None)
    if not coverage:
        return ""
    best = max(sorted(coverage), key=coverage.get)
    return build_spdx_license_expression(best)
