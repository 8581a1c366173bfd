"""Stack-style tables (Parquet or JSONL dumps, rows in no repository order) read as a stream.

A shuffle stage reads the tables in pieces (a Parquet row group, or a byte range of JSONL lines),
in batches, and routes every row to a bucket by a hash of its repository, through Parquet files
(`shuffle/{bucket}/...`). A scan task then reads one bucket and sees every row of its repositories
without random access, and no process holds an index of the table. The number of buckets follows
the input's size (`bucket_mb`), so a bucket, and a scan task's memory, stays the same size as the
input grows. This is datatrove's recipe for grouping by a key (a writer keyed by a shard
template, then one reader per shard), written with pyarrow so the rows stay columnar.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from datatrove.pipeline.base import PipelineStep

from codemill.curate import licenses
from codemill.curate.config import CurateConfig
from codemill.curate.io import PartitionWriter, Progress, atomic_json, read_part
from codemill.curate.layout import Work
from codemill.curate.records import RawFile, RepoMeta
from codemill.errors import UserError

JSONL_PIECE = 32 << 20
BATCH_ROWS = 2048
SHUFFLE_SCHEMA = pa.schema(
    [
        ("repo", pa.string()),
        ("path", pa.string()),
        ("content", pa.large_binary()),
        ("license", pa.string()),
        ("stars", pa.float64()),
        ("piece", pa.int32()),
        ("row", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Piece:
    """A part of a table one shuffle task reads: a row group, or JSONL bytes [start, end)."""

    path: str
    start: int
    end: int = 0


def pieces(path: str, cfg: CurateConfig, jsonl_piece: int = JSONL_PIECE) -> tuple[list[Piece], int, int]:
    """The pieces of one table, its size in bytes uncompressed and its rows (estimates for JSONL:
    the file size, and a row per KB)."""
    if path.endswith(".parquet"):
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        if cfg.columns["repo"] not in pf.schema_arrow.names:
            raise UserError(f"{path}: no column {cfg.columns['repo']!r}; set curate.columns.repo")
        groups = range(meta.num_row_groups)
        size = sum(meta.row_group(g).total_byte_size for g in groups)
        return [Piece(path, g) for g in groups], size, meta.num_rows
    size = Path(path).stat().st_size
    return [Piece(path, s, min(s + jsonl_piece, size)) for s in range(0, size, jsonl_piece)], size, size >> 10


def n_buckets(total_bytes: int, cfg: CurateConfig) -> int:
    return max(cfg.tasks, math.ceil(total_bytes / (cfg.bucket_mb << 20)))


def bucket_of(repos: pa.Array, n: int) -> np.ndarray:
    """xxh64(repository) mod n per row, hashing each distinct name of the batch once."""
    enc = pc.dictionary_encode(repos.combine_chunks() if isinstance(repos, pa.ChunkedArray) else repos)
    names = enc.dictionary.to_pylist()
    h = np.fromiter((xxhash.xxh64_intdigest(s.encode()) % n for s in names), np.int64, len(names))
    return h[enc.indices.to_numpy(zero_copy_only=False)]


class ShuffleStep(PipelineStep):
    name = "shuffle"
    type = "codemill"

    def __init__(self, all_pieces: list[Piece], buckets: int, cfg: CurateConfig, work: str | Path):
        super().__init__()
        self.pieces, self.buckets, self.cfg, self.work = all_pieces, buckets, cfg, Work(work)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        writer = PartitionWriter(self.work.shuffle, f"{rank:05d}", SHUFFLE_SCHEMA, self.cfg.buffer_mb << 20)
        progress = Progress(self.work.progress, "shuffle", rank)
        broken = []
        for index in range(rank, len(self.pieces), world_size):
            piece = self.pieces[index]
            try:
                for batch in _read_piece(piece, index, self.cfg):
                    bucket = bucket_of(batch.column("repo"), self.buckets)
                    order = np.argsort(bucket, kind="stable")
                    sorted_batch, counts = batch.take(order), np.bincount(bucket, minlength=self.buckets)
                    start = 0
                    for b in np.flatnonzero(counts):
                        writer.add(int(b), sorted_batch.slice(start, int(counts[b])))
                        start += int(counts[b])
            except (pa.ArrowException, OSError) as e:  # a damaged row group: counted, the rest read
                broken.append({"path": piece.path, "piece": piece.start, "error": f"{type(e).__name__}: {e}"})
            progress.advance()
        writer.close()
        atomic_json(self.work.broken(rank), broken)
        progress.flush()
        yield from ()


def _read_piece(piece: Piece, index: int, cfg: CurateConfig) -> Iterator[pa.Table]:
    c = cfg.columns
    if piece.path.endswith(".parquet"):
        pf = pq.ParquetFile(piece.path)
        wanted = [c[k] for k in ("repo", "path", "content", "license", "stars")]
        cols = [n for n in wanted if n in pf.schema_arrow.names]
        row = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[piece.start], columns=cols):
            yield _normalize(pa.Table.from_batches([batch]), index, row, cfg)
            row += batch.num_rows
        return
    for rows, offsets in _jsonl_batches(piece):
        recs = [r if isinstance(r, dict) else {} for r in rows]
        table = pa.table(
            {
                c["repo"]: pa.array([_str(r.get(c["repo"])) for r in recs], pa.string()),
                c["path"]: pa.array([_str(r.get(c["path"])) for r in recs], pa.string()),
                c["content"]: pa.array([_content(r.get(c["content"])) for r in recs], pa.large_binary()),
                c["license"]: pa.array([_license(r.get(c["license"])) for r in recs], pa.string()),
                c["stars"]: pa.array([_stars(r.get(c["stars"])) for r in recs], pa.float64()),
            }
        )
        yield _normalize(table, index, 0, cfg, rows=offsets)


def _jsonl_batches(piece: Piece) -> Iterator[tuple[list, list[int]]]:
    """Lines that start in [start, end), parsed, with their byte offsets; a bad line is None."""
    with open(piece.path, "rb") as f:
        f.seek(piece.start)
        pos = piece.start
        if pos:
            f.seek(pos - 1)
            pos += len(f.readline()) - 1  # finish the line that began in the previous piece
        rows, offsets = [], []
        while pos < piece.end:
            line = f.readline()
            if not line:
                break
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    rows.append(None)
                offsets.append(pos)
            pos += len(line)
            if len(rows) >= BATCH_ROWS:
                yield rows, offsets
                rows, offsets = [], []
        if rows:
            yield rows, offsets


def _str(v) -> str | None:
    return None if v is None else str(v)


def _content(v) -> bytes | None:
    if isinstance(v, str):
        return v.encode("utf-8", "surrogatepass")
    return v if isinstance(v, bytes) else None


def _license(v) -> str | None:
    if isinstance(v, list):
        return " OR ".join(map(str, v)) or None
    return str(v) if v else None


def _stars(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _normalize(t: pa.Table, index: int, row0: int, cfg: CurateConfig, rows=None) -> pa.Table:
    """Any table's columns as SHUFFLE_SCHEMA: missing or wrongly typed values become nulls."""
    c, n = cfg.columns, t.num_rows

    def col(key: str):
        return t.column(c[key]) if c[key] in t.column_names else pa.nulls(n)

    repo = col("repo").cast(pa.string())
    repo = pc.if_else(pc.equal(repo, ""), None, repo).fill_null("unknown")
    content = col("content")
    content = content.cast(pa.large_binary()) if _is_text(content.type) else pa.nulls(n, pa.large_binary())
    lic = col("license")
    if pa.types.is_list(lic.type) or pa.types.is_large_list(lic.type):
        lic = pc.binary_join(lic.cast(pa.list_(pa.string())), " OR ")
    lic = (
        lic.cast(pa.string())
        if _is_text(lic.type) or pa.types.is_null(lic.type)
        else pa.nulls(n, pa.string())
    )
    stars = col("stars")
    stars = stars.cast(pa.float64()) if _is_number(stars.type) else pa.nulls(n, pa.float64())
    row = pa.array(np.arange(row0, row0 + n) if rows is None else rows, pa.int64())
    path = col("path").cast(pa.string())
    path = pc.if_else(pc.is_valid(path), path, pc.binary_join_element_wise("row-", row.cast(pa.string()), ""))
    piece = pa.array(np.full(n, index, np.int32))
    return pa.table([repo, path, content, lic, stars, piece, row], schema=SHUFFLE_SCHEMA)


def _is_text(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def bucket_repositories(directory: Path) -> Iterator[tuple[RepoMeta, list[RawFile]]]:
    """The repositories of one bucket, by name; each repository's files by path, rows in table order."""
    t = read_part(directory, SHUFFLE_SCHEMA)
    t = t.sort_by([("repo", "ascending"), ("piece", "ascending"), ("row", "ascending")])
    names = t.column("repo").to_numpy(zero_copy_only=False)
    if not len(names):  # a bucket no repository hashed to (a small table, many tasks)
        return
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
    ends = [*list(starts[1:]), len(names)]
    for s, e in zip(starts, ends, strict=True):
        part = t.slice(int(s), int(e - s))
        meta = RepoMeta(str(names[s]), str(directory))
        lic = next((x for x in part.column("license").to_pylist() if x), None)
        if lic:
            meta.license, meta.license_source = licenses.normalize(lic), "table"
        stars = pc.max(part.column("stars")).as_py()
        meta.stars = int(stars) if stars is not None else None
        files = []
        for path, content in zip(
            part.column("path").to_pylist(), part.column("content").to_pylist(), strict=True
        ):
            if content is None:
                files.append(RawFile(path, 0, error="no_content"))
            else:
                files.append(RawFile(path, len(content), read=lambda k, d=content: d[:k]))
        yield meta, sorted(files, key=lambda f: f.path)
