"""The shards of a curated corpus on disk, named in one place: curate writes `files-NNNNN.parquet`
(one per task, a repository's rows together, in corpus order) and every reader finds them here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from codemill.errors import UserError

PATTERN = "files-*.parquet"


def shard_path(directory: str | Path, rank: int) -> Path:
    """Where task `rank` writes its shard: the scan's under .work/scan, refine's in the corpus."""
    return Path(directory) / f"files-{rank:05d}.parquet"


def shards(directory: str | Path) -> list[Path]:
    """The shards under `directory` in corpus order; none when there are none."""
    return sorted(Path(directory).glob(PATTERN))


def corpus_shards(corpus: str | Path) -> list[Path]:
    """A corpus's shards, for a reader that needs some: a directory without any is the user's error."""
    if found := shards(corpus):
        return found
    raise UserError(f"{corpus} has no {PATTERN}; run `codemill curate ... --out {corpus}`")


def corpus_rows(corpus: str | Path, columns: list[str], batch_size: int = 512) -> Iterator[tuple]:
    """The `columns` of every corpus file, one tuple a file, in corpus order, a batch at a time (a
    corpus can be larger than memory)."""
    import pyarrow.parquet as pq

    for f in corpus_shards(corpus):
        for batch in pq.ParquetFile(f).iter_batches(columns=columns, batch_size=batch_size):
            yield from zip(*(c.to_pylist() for c in batch.columns), strict=True)
