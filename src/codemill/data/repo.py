"""Reading a curated corpus one repository at a time, and natural-language text one chunk at a time.

Both are indexed up front from Parquet metadata and one small column, so any unit can be read
on its own: that is what lets the stream shard, skip and resume without reading the corpus whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow.parquet as pq

from codemill.curate.corpus import corpus_shards
from codemill.errors import UserError
from codemill.langs import ts_parser

_LINE = re.compile(r"[^\n]*\n|[^\n]+")


def lines_of(text: str) -> list[str]:
    """A text's lines, cut at `\n` only, each with its `\n`: `str.splitlines` also cuts at `\r`,
    `\x0c` and `\u2028`, which code holds inside strings and comments."""
    return _LINE.findall(text)


@dataclass
class SourceFile:
    path: str
    lang: str
    text: str

    @cached_property
    def src(self) -> bytes:
        return self.text.encode("utf-8")

    @cached_property
    def is_ascii(self) -> bool:
        return self.text.isascii()

    def tree(self):
        """A fresh tree-sitter tree (not cached: a large repository's trees would not fit in memory)."""
        parser = ts_parser(self.lang)
        return parser.parse(self.src) if parser is not None else None


@dataclass(frozen=True)
class Segment:
    file: int  # index into the source's file list
    row_group: int
    start: int
    stop: int


class CodeCorpus:
    """The repositories of a corpus directory (`files-*.parquet`, rows of a repository together)."""

    def __init__(self, corpus: str | Path):
        self.files = corpus_shards(corpus)
        self.repos: list[str] = []
        self.segments: list[list[Segment]] = []
        for fi, path in enumerate(self.files):
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                names = pf.read_row_group(rg, columns=["repo"]).column("repo").to_pylist()
                start = 0
                for i in range(1, len(names) + 1):
                    if i == len(names) or names[i] != names[start]:
                        seg = Segment(fi, rg, start, i)
                        if self.repos and self.repos[-1] == names[start]:
                            self.segments[-1].append(seg)
                        else:
                            self.repos.append(names[start])
                            self.segments.append([seg])
                        start = i
        self._cache: tuple[tuple[int, int], object] | None = None

    def __len__(self) -> int:
        return len(self.repos)

    def _row_group(self, fi: int, rg: int):
        if self._cache is None or self._cache[0] != (fi, rg):
            table = pq.ParquetFile(self.files[fi]).read_row_group(rg, columns=["path", "lang", "content"])
            self._cache = ((fi, rg), table.to_pydict())
        return self._cache[1]

    def read(self, i: int) -> tuple[str, list[SourceFile]]:
        files = []
        for s in self.segments[i]:
            cols = self._row_group(s.file, s.row_group)
            for r in range(s.start, s.stop):
                files.append(SourceFile(cols["path"][r], cols["lang"][r], cols["content"][r]))
        return self.repos[i], files


class TextCorpus:
    """Natural-language documents from `.parquet` or `.jsonl` files, in chunks of `chunk` rows."""

    def __init__(self, sources: list[str | Path], column: str = "text", chunk: int = 16):
        self.column, self.chunk = column, chunk
        self.units: list[tuple[Path, int, int]] = []  # (file, first row, row count)
        self._offsets: dict[Path, list[int]] = {}
        for src in sources:
            p = Path(src)
            paths = sorted(p.glob("*.parquet")) + sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
            for path in paths:
                rows = self._count(path)
                self.units += [(path, s, min(chunk, rows - s)) for s in range(0, rows, chunk)]
        if not self.units:
            raise UserError(f"no .parquet or .jsonl text found in {sources}")
        self._cache: tuple[Path, list[str]] | None = None

    def _count(self, path: Path) -> int:
        if path.suffix == ".parquet":
            return pq.ParquetFile(path).metadata.num_rows
        if path.suffix != ".jsonl":
            raise UserError(f"{path}: natural-language text must be .parquet or .jsonl")
        offsets, pos = [], 0
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(pos)
                pos += len(line)
        self._offsets[path] = offsets
        return len(offsets)

    def __len__(self) -> int:
        return len(self.units)

    def read(self, i: int) -> list[str]:
        path, start, count = self.units[i]
        if path.suffix == ".parquet":
            if self._cache is None or self._cache[0] != path:
                self._cache = (path, pq.read_table(path, columns=[self.column]).column(0).to_pylist())
            texts = self._cache[1][start : start + count]
        else:
            texts = []
            with path.open("rb") as f:
                for off in self._offsets[path][start : start + count]:
                    f.seek(off)
                    row = json.loads(f.readline())
                    if self.column not in row:
                        raise UserError(f"{path}: a row has no {self.column!r} field")
                    texts.append(row[self.column])
        return [t for t in texts if isinstance(t, str) and t]
