"""`npm:` sources: JavaScript and TypeScript packages from the npm registry, each one a repository.

`npm:lodash@4.17.21,chalk@5.3.0` or `npm:FILE` (one spec per line, `#` comments; the recipes pin a
list). `npm pack` downloads each package's tarball into a cache once (`CODEMILL_CACHE`, else
~/.cache/codemill), and the tarballs are read as archives; the license comes from package.json's
`license` field, else the license file. A package is what its authors publish: its sources, and
often a built `dist/` that the curation rules (minified, generated, near-duplicate) thin out.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from codemill.cache import cache_dir
from codemill.errors import UserError

SPEC = re.compile(r"^(@[\w.-]+/)?[\w.-]+(@[\w.^~<>=*-]+)?$")


def specs(source: str) -> list[str]:
    """The package specs of an `npm:` source (a comma list or a file of them)."""
    body = source.removeprefix("npm:")
    if Path(body).is_file():
        lines = (line.split("#", 1)[0].strip() for line in Path(body).read_text().splitlines())
        items = [line for line in lines if line]
    else:
        items = [s.strip() for s in body.split(",") if s.strip()]
    if not items:
        raise UserError(f"{source}: no npm packages named (npm:NAME@VERSION,... or npm:FILE)")
    for s in items:
        if not (SPEC.match(s) or Path(s).is_dir()):
            raise UserError(f"{source}: {s!r} is not an npm package spec (name or name@version)")
    return items


def fetch(items: list[str]) -> list[tuple[str, Path]]:
    """(name@version, tarball) per spec, downloading only what the cache lacks. A local folder
    (a package under development) is packed each time."""
    if shutil.which("npm") is None:
        raise UserError("npm sources need the npm command: apt-get install npm (or nodejs)")
    dest = cache_dir("npm")
    dest.mkdir(parents=True, exist_ok=True)
    index = dest / "index.json"  # pinned spec -> its tarball, for what was fetched before
    known = json.loads(index.read_text()) if index.is_file() else {}
    todo = [s for s in items if not (_pinned(s) and s in known and (dest / known[s]["file"]).is_file())]
    if todo:
        proc = subprocess.run(
            ["npm", "pack", "--json", "--ignore-scripts", "--pack-destination", str(dest), *todo],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode:
            raise UserError(f"npm pack failed: {proc.stderr.strip()[-2000:]}")
        for spec, info in zip(todo, json.loads(proc.stdout), strict=True):
            known[spec] = {"file": info["filename"], "id": f"{info['name']}@{info['version']}"}
        tmp = index.with_suffix(".tmp")
        tmp.write_text(json.dumps({s: v for s, v in known.items() if _pinned(s)}, indent=1, sort_keys=True))
        tmp.replace(index)
    return [(known[s]["id"], dest / known[s]["file"]) for s in items]


def _pinned(spec: str) -> bool:
    """name@1.2.3 names one tarball forever; a bare name, a range or a folder may change."""
    version = spec.lstrip("@").partition("@")[2]
    return bool(re.fullmatch(r"\d+\.\d+\.\d+[\w.+-]*", version)) and not Path(spec).is_dir()
