"""Where repositories come from: directories, git repositories, archives, Stack-style tables,
`npm:` packages (npm.py) and `installed` (the standard library and every installed distribution).

A source expands to an ordered list of `Unit`s, one per repository (a table is one unit, which
table_sources.py's shuffle turns into buckets of repositories), so tasks can split the work by unit index. Opening a unit gives its metadata and a stream of `RawFile`s. Nothing here writes to
the input; every failure to read becomes a `RawFile` with an `error`, counted downstream.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata as md
import io
import json
import os
import re
import stat
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from codemill.curate import licenses
from codemill.curate.config import CurateConfig
from codemill.curate.records import RawFile, RepoMeta
from codemill.curate.table_sources import bucket_repositories
from codemill.errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
TABLE_SUFFIXES = (".parquet", ".jsonl", ".json")
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".tox"}
REPO_JSON = ".codemill-repo.json"  # metadata beside a checkout (_read_repo_json), not one of its files


@dataclass(frozen=True)
class Unit:
    """One repository inside a source: enough to reopen it in any process."""

    kind: str  # dir | git | archive | table | bucket (of shuffled tables) | dist | stdlib
    name: str
    locator: str
    extra: tuple = ()


# -- expansion of a source argument into units ------------------------------------------------


def expand(source: str, cfg: CurateConfig) -> list[Unit]:
    """Units of one source argument, in a deterministic order."""
    if source == "installed":
        return installed_units()
    if source.startswith("npm:"):
        from codemill.curate import npm

        return [Unit("archive", name, str(path)) for name, path in npm.fetch(npm.specs(source))]
    p = Path(source)
    if not p.exists():
        raise UserError(f"source {source!r} does not exist (a path, or 'installed')")
    if p.is_file():
        if source.endswith(ARCHIVE_SUFFIXES):
            return [Unit("archive", _archive_name(p), str(p))]
        if source.endswith(TABLE_SUFFIXES):
            return [Unit("table", p.name, str(p))]  # split into repositories by table_sources.py
        raise UserError(f"{source}: not an archive ({ARCHIVE_SUFFIXES}) nor a table {TABLE_SUFFIXES}")
    if _is_single_repo(p):
        return [_dir_unit(p)]
    units = []
    for child in sorted(p.iterdir()):
        if child.name.startswith(".") or child.is_symlink():
            continue
        if child.is_dir():
            units.append(_dir_unit(child))
        elif child.name.endswith(ARCHIVE_SUFFIXES):
            units.append(Unit("archive", _archive_name(child), str(child)))
    return units


def _dir_unit(p: Path) -> Unit:
    kind = "git" if (p / ".git").exists() else "dir"
    return Unit(kind, p.resolve().name, str(p))


def _is_single_repo(p: Path) -> bool:
    """A repository has .git or files at its top; a directory of repositories has only folders
    and archives."""
    if (p / ".git").exists():
        return True
    try:
        return any(
            c.is_file() and not c.name.startswith(".") and not c.name.endswith(ARCHIVE_SUFFIXES)
            for c in p.iterdir()
        )
    except OSError:
        return True


def _archive_name(p: Path) -> str:
    name = p.name
    for s in ARCHIVE_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def installed_units() -> list[Unit]:
    units = [Unit("stdlib", f"python-stdlib-{sys.version_info.major}.{sys.version_info.minor}", "")]
    seen = set()
    for dist in md.distributions():
        m = dist.metadata  # parsed once: dist.version parses it again
        name = m["Name"]
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        units.append(Unit("dist", f"{name}-{m['Version']}", str(dist._path)))
    return sorted(units, key=lambda u: (u.kind != "stdlib", u.name.lower()))


# -- opening a unit ---------------------------------------------------------------------------


def open_unit(unit: Unit, cfg: CurateConfig) -> tuple[RepoMeta, Iterator[RawFile]]:
    opener = {
        "dir": _open_dir,
        "git": _open_git,
        "archive": _open_archive,
        "dist": _open_dist,
        "stdlib": _open_stdlib,
        "broken": _open_broken,
    }[unit.kind]
    return opener(unit, cfg)


def _open_broken(unit: Unit, cfg: CurateConfig) -> tuple[RepoMeta, Iterator[RawFile]]:
    """A source found unreadable before the scan (a table whose footer is gone): one counted drop."""
    return RepoMeta(unit.name, unit.locator), iter([RawFile(".", 0, error=unit.extra[0])])


def repositories(unit: Unit, cfg: CurateConfig) -> Iterator[tuple[RepoMeta, Iterator[RawFile]]]:
    """The repositories of a unit: one, or those of a shuffled table bucket."""
    if unit.kind == "bucket":
        yield from bucket_repositories(Path(unit.locator))
    else:
        yield open_unit(unit, cfg)


def resolve_license(meta: RepoMeta) -> None:
    """Fill meta.license from license texts when metadata gave none."""
    if meta.license or not meta.license_texts:
        return
    for text in meta.license_texts:
        spdx = licenses.classify_text(text)
        if spdx:
            meta.license, meta.license_source = spdx, "license-file"
            return


def _read_license_text(read: Callable[[int], bytes]) -> str | None:
    try:
        return read(200_000).decode("utf-8", "replace")
    except OSError:
        return None


def _walk(root: Path, skip: frozenset[str] = frozenset({REPO_JSON})) -> Iterator[RawFile]:
    """Files under root, sorted, never following directory symlinks, leaving out the top-level
    entries named in `skip`; errors become RawFiles. Paths are joined as strings: pathlib's parsing
    took a third of the walk on the installed packages."""
    stack = [(str(root), "")]
    while stack:
        d, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name, reverse=True)
        except OSError as e:
            yield RawFile(prefix.rstrip("/") or ".", 0, error=f"unreadable_dir:{e.errno}")
            continue
        for e in entries:
            if not prefix and e.name in skip:
                continue
            rel = prefix + e.name
            try:
                if e.is_dir(follow_symlinks=False):
                    if e.name not in SKIP_DIRS:
                        stack.append((e.path, rel + "/"))
                    continue
                st = os.stat(e.path)  # follows file symlinks; loops raise ELOOP
            except OSError as err:
                yield RawFile(rel, 0, error="symlink_loop" if err.errno == 40 else "unreadable")
                continue
            if stat.S_ISDIR(st.st_mode):
                continue  # a symlink to a directory: not followed
            if not stat.S_ISREG(st.st_mode):
                yield RawFile(rel, 0, error="not_regular")
                continue
            yield RawFile(rel, st.st_size, read=_file_reader(e.path, st.st_size))


def _file_reader(path: str, size: int) -> Callable[[int], bytes]:
    """read(limit): the file's first `limit` bytes, read to `limit` or its end as a buffered `open`
    did, but with os.read and the size the walk found as the first read's length: `open(...).read`
    allocated `limit` (1 MB) per file and made three more system calls."""

    def read(limit: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, min(limit, size + 1))
            while len(data) < limit and (more := os.read(fd, min(limit - len(data), 1 << 16))):
                data += more
            return data
        finally:
            os.close(fd)

    return read


def _license_texts_in(files: list[RawFile]) -> list[str]:
    texts = []
    for f in files:
        if "/" not in f.path and f.read and licenses.LICENSE_FILE.match(f.path):
            text = _read_license_text(f.read)
            if text:
                texts.append(text)
    return texts


def _open_dir(unit: Unit, cfg: CurateConfig) -> tuple[RepoMeta, Iterator[RawFile]]:
    root = Path(unit.locator)
    meta = RepoMeta(unit.name, unit.locator)
    top = [RawFile(e.name, 0, read=_file_reader(e.path, 0)) for e in _top_files(root)]
    meta.license_texts = _license_texts_in(top)
    _read_repo_json(root, meta)
    resolve_license(meta)
    return meta, _walk(root)


def _top_files(root: Path) -> list[os.DirEntry]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for e in entries:
        with contextlib.suppress(OSError):  # a symlink loop raises here
            if e.is_file(follow_symlinks=False):
                out.append(e)
    return out


def _read_repo_json(root: Path, meta: RepoMeta) -> None:
    """Optional `.codemill-repo.json` beside a checkout: stars and license from a hosting API."""
    p = root / REPO_JSON
    if not p.is_file():
        return
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError):
        return
    meta.stars = int(info["stars"]) if info.get("stars") is not None else None
    if info.get("license"):
        meta.license, meta.license_source = licenses.normalize(info["license"]), "repo-metadata"


def _git(root: str, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", root, *args], capture_output=True, text=True, check=True, timeout=600
    ).stdout


def _open_git(unit: Unit, cfg: CurateConfig) -> tuple[RepoMeta, Iterator[RawFile]]:
    """The tree of the default branch (origin/HEAD, else HEAD), read from the object store."""
    root = unit.locator
    meta = RepoMeta(unit.name, root)
    _read_repo_json(Path(root), meta)
    try:
        ref = _git(root, "symbolic-ref", "-q", "refs/remotes/origin/HEAD").strip()
    except subprocess.CalledProcessError:
        ref = "HEAD"
    try:
        meta.commits = int(_git(root, "rev-list", "--count", ref))
        listing = _git(root, "ls-tree", "-r", "-z", "-l", "--full-tree", ref)
    except (subprocess.CalledProcessError, ValueError):
        meta.license_source = "none"
        return meta, iter([RawFile(".", 0, error="broken_git")])
    files = []
    for entry in listing.split("\0"):
        if not entry:
            continue
        info, path = entry.split("\t", 1)
        mode, kind, sha, size = info.split()
        if kind != "blob" or mode == "120000":
            files.append(RawFile(path, 0, error="not_regular"))
            continue
        files.append(RawFile(path, int(size), read=_blob_reader(root, sha)))
    files.sort(key=lambda f: f.path)
    meta.license_texts = _license_texts_in(files)
    resolve_license(meta)
    return meta, iter(files)


def _blob_reader(root: str, sha: str) -> Callable[[int], bytes]:
    def read(limit: int) -> bytes:
        out = subprocess.run(["git", "-C", root, "cat-file", "blob", sha], capture_output=True)
        if out.returncode:
            raise OSError(out.stderr.decode(errors="replace"))
        return out.stdout[:limit]

    return read


def _open_archive(unit: Unit, cfg: CurateConfig) -> tuple[RepoMeta, Iterator[RawFile]]:
    meta = RepoMeta(unit.name, unit.locator)
    try:
        files = (
            _zip_files(unit.locator)
            if unit.locator.endswith(".zip")
            else _tar_files(unit.locator, cfg.max_bytes + 1)
        )
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        return meta, iter([RawFile(".", 0, error=f"broken_archive:{type(e).__name__}")])
    files = _strip_common_root(files)
    _read_package_json(files, meta)
    meta.license_texts = _license_texts_in(files)
    resolve_license(meta)
    return meta, iter(files)


def _read_package_json(files: list[RawFile], meta: RepoMeta) -> None:
    """An npm package's license field ("MIT", "(MIT OR Apache-2.0)", or the old {"type": "MIT"})."""
    top = next((f for f in files if f.path == "package.json" and f.read), None)
    if top is None:
        return
    try:
        value = json.loads(top.read(1 << 20)).get("license")
    except (OSError, ValueError, AttributeError):
        return
    value = value.get("type") if isinstance(value, dict) else value
    if isinstance(value, str) and value.strip():
        meta.license, meta.license_source = licenses.normalize(value), "package.json"


def _strip_common_root(files: list[RawFile]) -> list[RawFile]:
    tops = {f.path.split("/", 1)[0] for f in files}
    if len(tops) == 1 and all("/" in f.path for f in files):
        for f in files:
            f.path = f.path.split("/", 1)[1]
    return sorted(files, key=lambda f: f.path)


def _tar_files(path: str, cap: int) -> list[RawFile]:
    """One pass over the archive, keeping each member's first `cap` bytes: a compressed tar has no
    random access, and reopening it per member read it from the start each time (quadratic: a
    1,000-file npm package took minutes). Memory: the repository's code, each file cut at `cap`."""
    out = []
    with tarfile.open(path) as tf:
        for m in tf:
            if m.isdir():
                continue
            name = _member(m.name)
            if not m.isfile():
                out.append(RawFile(name, 0, error="not_regular"))
                continue
            try:
                data = tf.extractfile(m).read(cap)
            except (tarfile.TarError, EOFError, OSError) as e:
                out.append(RawFile(name, m.size, error=f"broken_archive:{type(e).__name__}"))
                continue
            out.append(RawFile(name, m.size, read=lambda k, d=data: d[:k]))
    return out


def _member(name: str) -> str:
    """An archive member's name as a path inside the repository: `.`, `..` and a leading `/` dropped
    (nothing is extracted, but the name becomes the file's path in the corpus and in benchmarks)."""
    return "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", ".", ".."))


def _zip_files(path: str) -> list[RawFile]:
    out = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            out.append(RawFile(_member(info.filename), info.file_size, read=_zip_reader(path, info.filename)))
    return out


def _zip_reader(path: str, member: str) -> Callable[[int], bytes]:
    def read(limit: int) -> bytes:
        try:
            with zipfile.ZipFile(path) as zf, zf.open(member) as f:
                return f.read(limit)
        except (zipfile.BadZipFile, EOFError, RuntimeError) as e:
            raise OSError(str(e)) from e

    return read


# -- installed code ---------------------------------------------------------------------------


def _open_stdlib(unit: Unit, cfg: CurateConfig) -> tuple[RepoMeta, Iterator[RawFile]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    meta = RepoMeta(unit.name, str(root))
    lic = root / "LICENSE.txt"
    if lic.is_file():
        meta.license_texts = [lic.read_text(errors="replace")]
    resolve_license(meta)
    # not walked: the site folders' distributions are units of their own (31k files left unread here)
    return meta, _walk(root, frozenset({REPO_JSON, "site-packages", "dist-packages"}))


def _open_dist(unit: Unit, cfg: CurateConfig) -> tuple[RepoMeta, Iterator[RawFile]]:
    dist = md.Distribution.at(unit.locator)
    meta = RepoMeta(unit.name, unit.locator)
    m = dist.metadata
    expr = licenses.normalize(m.get("License-Expression"))
    if expr:
        meta.license_source = "License-Expression"
    else:
        short = m.get("License")
        expr = licenses.normalize(short) if short and len(short) < 200 else None
        meta.license_source = "License" if expr else meta.license_source
    if not expr:
        expr = licenses.from_classifiers(m.get_all("Classifier") or [])
        meta.license_source = "classifiers" if expr else meta.license_source
    meta.license = expr
    files = []
    base = os.path.join(str(dist.locate_file("")), "")
    for rel in _record_paths(dist):
        if rel.startswith(".."):  # scripts installed outside site-packages
            continue
        full = rel if rel.startswith("/") else base + rel  # os.path.join's result, as plain strings
        try:
            st = os.stat(full)
        except OSError:
            files.append(RawFile(rel, 0, error="unreadable"))
            continue
        files.append(RawFile(rel, st.st_size, read=_file_reader(full, st.st_size)))
    if not meta.license:
        lic_files = [
            f
            for f in files
            if ".dist-info/" in f.path and licenses.LICENSE_FILE.match(f.path.rsplit("/", 1)[-1])
        ]
        meta.license_texts = [t for f in lic_files if f.read and (t := _read_license_text(f.read))]
        short = m.get("License")
        if short and len(short) >= 200:
            meta.license_texts.insert(0, short)
        resolve_license(meta)
    return meta, iter(files)


# a path with an empty or `.` part, or a leading `/`: PurePosixPath rewrites it
_PATHLIB_REWRITES = re.compile(r"(?:^|/)\.?(?:/|$)")


def _record_paths(dist: md.Distribution) -> list[str]:
    """`sorted(map(str, dist.files or []))`, read from RECORD (else SOURCES.txt) as importlib.metadata
    reads them, without a PackagePath per file: those took two thirds of opening the installed
    distributions. Only a path that pathlib would rewrite goes through it."""
    text = dist.read_text("RECORD")
    if text:
        lines = text.splitlines()
    else:
        text = dist.read_text("SOURCES.txt")  # may hold literal commas: one quoted field per line
        lines = [f'"{line}"' for line in text.splitlines()] if text else []
    paths = (row[0] for row in csv.reader(lines) if row)
    return sorted(str(PurePosixPath(p)) if _PATHLIB_REWRITES.search(p) else p for p in paths)


def read_bytes(f: RawFile, limit: int) -> tuple[bytes | None, str | None]:
    """Content of a RawFile (at most limit + 1 bytes, so oversize shows), or a drop reason."""
    if f.error:
        return None, f.error
    try:
        return f.read(limit + 1), None
    except PermissionError:
        return None, "permission_denied"
    except (OSError, io.UnsupportedOperation):
        return None, "unreadable"
