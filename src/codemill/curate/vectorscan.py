"""Vectorscan (the `hyperscan` package): many patterns found in one pass over bytes.

Curation uses it only to rule out where a Python pattern cannot match (PII triggers, sensitive
words, generated-code markers, license notices, long lines and encoded runs); the Python patterns
decide, so verdicts are theirs. A database does not pickle: each process builds its own on first use.
"""

from __future__ import annotations

from collections.abc import Sequence

import hyperscan


def database(
    expressions: Sequence[bytes], flags: int | Sequence[int], literal: bool = False
) -> hyperscan.Database:
    """A block-mode database; a pattern's id is its place in `expressions`; `flags` one for all or
    one per pattern; `literal`: the expressions are plain strings (Vectorscan's literal compiler)."""
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    n = len(expressions)
    db.compile(
        expressions=list(expressions),
        ids=list(range(n)),
        elements=n,
        flags=list(flags) if not isinstance(flags, int) else [flags] * n,
        literal=literal,
    )
    return db


def found(db: hyperscan.Database, data: bytes) -> set[int]:
    """The ids of the patterns that match somewhere in data."""
    ids: set[int] = set()
    db.scan(data, match_event_handler=lambda i, _start, _end, _flags, _ctx: ids.add(i))
    return ids
