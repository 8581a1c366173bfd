"""The records a source yields: a repository's metadata and its files. A module of their own so that
sources.py (which opens table buckets through table_sources.py) and table_sources.py (which yields
them too) both import them, and not each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RawFile:
    """A file of a repository as a source lists it, read lazily (or why it cannot be)."""

    path: str
    size: int
    read: Callable[[int], bytes] | None = None  # read(limit) -> at most limit bytes
    error: str | None = None  # why it cannot be read: unreadable, not_regular, symlink_loop, ...


@dataclass
class RepoMeta:
    """A repository's name, source and the metadata the license check and the score use."""

    name: str
    source: str
    license: str | None = None
    license_source: str = "none"
    stars: int | None = None
    commits: int | None = None
    license_texts: list[str] = field(default_factory=list)
