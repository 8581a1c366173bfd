"""Accounting: files and bytes in and out of every stage, drops by reason, a row per dropped file.

Each task keeps its own ledger and writes it atomically when it ends, so a task that is rerun after
a crash replaces its numbers instead of adding to them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from codemill.curate.checks import STAGES
from codemill.curate.io import ShardWriter, atomic_json

DROP_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("bytes", pa.int64()),
        ("detail", pa.string()),
        ("excerpt", pa.string()),
    ]
)
EXCERPT_CHARS = 400


def _empty() -> dict:
    return {"files_in": 0, "bytes_in": 0, "files_out": 0, "bytes_out": 0, "drops": Counter()}


class Ledger:
    """One task's counts, and its drop rows streamed to `drops-{rank}.parquet` (a task's memory
    must not grow with the files it drops)."""

    def __init__(self, directory: Path, rank: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.rank = directory, rank
        self.stages = {s: _empty() for s in STAGES}
        self.extra: Counter = Counter()  # e.g. PII replacements per tag
        self.rows = ShardWriter(directory / f"drops-{rank:05d}.parquet", DROP_SCHEMA)

    def keep(self, stage: str, nbytes: int, bytes_out: int | None = None) -> None:
        s = self.stages[stage]
        s["files_in"] += 1
        s["bytes_in"] += nbytes
        s["files_out"] += 1
        s["bytes_out"] += nbytes if bytes_out is None else bytes_out

    def drop(
        self, stage: str, reason: str, nbytes: int, repo: str, path: str, detail: str = "", excerpt: str = ""
    ) -> None:
        s = self.stages[stage]
        s["files_in"] += 1
        s["bytes_in"] += nbytes
        s["drops"][reason] += 1
        self.rows.add(
            {
                "stage": stage,
                "reason": reason,
                "repo": repo,
                "path": path,
                "bytes": nbytes,
                "detail": detail[:500],
                "excerpt": excerpt[:EXCERPT_CHARS],
            }
        )

    def save(self) -> None:
        self.rows.close()
        atomic_json(
            self.directory / f"ledger-{self.rank:05d}.json", {"stages": self.stages, "extra": self.extra}
        )


def merge(paths: list[Path]) -> tuple[dict, Counter]:
    """Sum the ledgers of many tasks and steps, in stage order."""
    stages = {s: _empty() for s in STAGES}
    extra: Counter = Counter()
    for p in sorted(paths):
        d = json.loads(p.read_text())
        for name, s in d["stages"].items():
            for k in ("files_in", "bytes_in", "files_out", "bytes_out"):
                stages[name][k] += s[k]
            stages[name]["drops"].update(s["drops"])
        extra.update(d["extra"])
    return stages, extra
