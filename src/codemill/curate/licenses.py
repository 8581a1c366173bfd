"""Repository licenses: read from metadata first, else classify license files with ScanCode.

The permissive list is data (`data/licenses.json`): the Blue Oak Council list by tier and The Stack's
list, each with its source and date. ScanCode is the well-kept classifier; its index loads once per
process (about 5 s) and only when a repository has no usable metadata, and verdicts are cached by
the SHA-256 of the license text.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from importlib import resources

from license_expression import ExpressionError, LicenseSymbol, get_spdx_licensing

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
}


@cache
def permissive_ids(tiers: tuple[str, ...], stack_list: bool) -> frozenset[str]:
    data = json.loads(resources.files("codemill.curate").joinpath("data/licenses.json").read_text())
    ids = {i for t in tiers for i in data["blueoak"]["tiers"].get(t, [])}
    if stack_list:
        removed = set(data["stack"]["weak_copyleft_removed_in_v1_1"])
        ids |= set(data["stack"]["permissive"]) - removed
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
    name = _NAMES.get(text.lower().rstrip("."))
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
    allowed = permissive_ids(tuple(cfg.blueoak_tiers), cfg.stack_list)
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


_TEXT_CACHE: dict[str, str | None] = {}


def classify_text(text: str) -> str | None:
    """SPDX expression of the license that covers most of a license text; None if none found."""
    key = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
    if key not in _TEXT_CACHE:
        _TEXT_CACHE[key] = _scancode_classify(text)
    return _TEXT_CACHE[key]


def _scancode_classify(text: str) -> str | None:
    from licensedcode.cache import build_spdx_license_expression, get_index

    coverage: dict[str, int] = {}
    for m in get_index().match(query_string=text):
        expr = m.rule.license_expression
        coverage[expr] = coverage.get(expr, 0) + m.len()
    coverage.pop("unknown-license-reference", None)
    if not coverage:
        return None
    best = max(sorted(coverage), key=coverage.get)
    return build_spdx_license_expression(best)
