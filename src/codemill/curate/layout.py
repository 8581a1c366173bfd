"""Curate's work directory (`OUT/.work`) and the file id, each defined once: stages on different
machines and a run resumed by newer code meet only through these names, so none is spelled twice.

    run.json                      sources, settings, repositories: checked on resume
    logs/{stage}/, {stage}.stderr datatrove's logs and completion marks; progress/{stage}-{rank}
    shuffle/{bucket}/, broken-{rank}.json    table rows by repository bucket
    scan/  files-, repos-, drops-{rank}.parquet, ledger-{rank}.json
    dedup/ sig/{part}/, cut.json, score.json, bands/{band}/{part}.parquet, pairs/{band}-{range}.parquet,
           nodes/, similar/{part}.parquet|json, pairs.json, removed/, clusters/
    refine/ repos-, drops-{rank}.parquet, ledger-{rank}.json

A file is named by its id, `scan shard << 32 | row`: the row of the scan shard that holds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROW_BITS = 32


def file_id(shard: int, row: int) -> int:
    """The id of row `row` of scan shard `shard`."""
    return shard << ROW_BITS | row


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) of each id, as int64 arrays."""
    ids = np.asarray(ids, np.uint64)
    return (ids >> np.uint64(ROW_BITS)).astype(np.int64), (ids & np.uint64((1 << ROW_BITS) - 1)).astype(
        np.int64
    )


def _rank(name: str, rank: int, suffix: str = ".parquet") -> str:
    return f"{name}-{rank:05d}{suffix}"


class Work:
    """The paths under a run's work directory (picklable: every step carries one)."""

    def __init__(self, root: Work | str | Path):
        self.root = root.root if isinstance(root, Work) else Path(root)

    @classmethod
    def of(cls, out: str | Path) -> Work:
        """The work directory of the corpus directory `out`."""
        return cls(Path(out) / ".work")

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    def logs(self, stage: str | None = None) -> Path:
        return self.root / "logs" / stage if stage else self.root / "logs"

    def stage_log(self, stage: str) -> Path:
        """The stderr of a stage's executor (slurm's too: `stage_log("slurm")`)."""
        return self.root / "logs" / f"{stage}.stderr"

    @property
    def progress(self) -> Path:
        return self.root / "progress"

    # -- shuffle (tables) --
    @property
    def shuffle(self) -> Path:
        return self.root / "shuffle"

    def bucket(self, b: int) -> Path:
        return self.shuffle / f"{b:05d}"

    def broken(self, rank: int) -> Path:
        return self.shuffle / _rank("broken", rank, ".json")

    # -- scan and refine: one directory each, the same names in both --
    @property
    def scan(self) -> Path:
        return self.root / "scan"

    @property
    def refine(self) -> Path:
        return self.root / "refine"

    @staticmethod
    def repos(stage_dir: Path, rank: int) -> Path:
        return stage_dir / _rank("repos", rank)

    @staticmethod
    def every(stage_dir: Path, name: str, suffix: str = ".parquet") -> list[Path]:
        """Every task's `name` file of a stage directory, in rank order."""
        return sorted(stage_dir.glob(f"{name}-*{suffix}"))

    # -- dedup --
    @property
    def dedup(self) -> Path:
        return self.root / "dedup"

    @property
    def sig(self) -> Path:
        return self.dedup / "sig"

    def sig_part(self, part: int) -> Path:
        return self.sig / f"{part:05d}"

    @property
    def cut_json(self) -> Path:
        return self.dedup / "cut.json"

    @property
    def score_json(self) -> Path:
        return self.dedup / "score.json"

    def band(self, band: int) -> Path:
        return self.dedup / "bands" / f"{band:02d}"

    @property
    def pairs(self) -> Path:
        return self.dedup / "pairs"

    def pair_file(self, band: int, key_range: int) -> Path:
        return self.pairs / f"{band:02d}-{key_range:05d}.parquet"

    @property
    def pairs_json(self) -> Path:
        return self.dedup / "pairs.json"

    @property
    def nodes(self) -> Path:
        return self.dedup / "nodes"

    @property
    def similar(self) -> Path:
        return self.dedup / "similar"

    @property
    def removed(self) -> Path:
        return self.dedup / "removed"

    @property
    def clusters(self) -> Path:
        return self.dedup / "clusters"
