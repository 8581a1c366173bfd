"""The dedup stages, sharded the way datatrove's MinHash stages are (signatures, buckets, cluster),
with exact dedup and an exact-Jaccard verification stage added.

A file is named by its id (`layout.file_id`: its scan shard and row). Scan tasks route one signature row per file
to an exact-dedup part by its SHA-256 (`dedup/sig/{part}/`), with its rank inputs. The rank (best
first, RANK_ORDER): a copy that passes the quality checks (their verdicts are taken at scan), then
an upstream copy before a vendored one (`pip/_vendor/rich/console.py` gives way to
`rich/console.py`), then repository score, stars, repository and path. Then:

exact (one task per part): the repository score cut and exact dedup within the part; survivors'
    band keys go to one file per band, sorted by key (`dedup/bands/{band}/{part}.parquet`).
buckets (one task per band and key range): reads its key range of every file of its band (row
    groups outside the range are skipped by their statistics), and writes the pairs sharing a key,
    sorted by the verify part they belong to.
verify (one task per part): the exact Jaccard of its pairs, reading only the rows it needs.
cluster (one task): components and covering sets over the verified pairs; its memory grows with
    the duplicate pairs, not with the corpus.

Every output is written atomically, so a killed task is simply rerun.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from codemill.curate import dedup, minhash
from codemill.curate.checks import ExactDedup, NearDedup, RepoScore
from codemill.curate.config import CurateConfig
from codemill.curate.corpus import shard_path
from codemill.curate.io import Progress, atomic_json, atomic_parquet, read_part, read_tables
from codemill.curate.layout import Work, split_ids

SIG_SCHEMA = pa.schema(
    [
        ("id", pa.uint64()),
        ("sha256", pa.string()),
        ("score", pa.float64()),
        ("stars", pa.int64()),
        ("scored", pa.bool_()),  # the repository has a score signal: the score cut may take it
        ("passes", pa.bool_()),  # the file passes the quality checks (syntax, static analysis)
        ("vendored", pa.bool_()),  # under a vendoring directory (VENDORED)
        ("repo", pa.string()),
        ("path", pa.string()),
        ("n_shingles", pa.int64()),
        ("bands", pa.list_(pa.uint64())),
    ]
)
REMOVED_SCHEMA = pa.schema(
    [("id", pa.uint64()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)
CLUSTER_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("cluster", pa.string()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("kept", pa.bool_()),
        ("duplicate_of", pa.string()),
        ("jaccard", pa.float64()),
    ]
)
NODE_SCHEMA = pa.schema(
    [
        ("id", pa.uint64()),
        ("passes", pa.bool_()),
        ("vendored", pa.bool_()),
        ("score", pa.float64()),
        ("stars", pa.int64()),
        ("repo", pa.string()),
        ("path", pa.string()),
    ]
)
BAND_SCHEMA = pa.schema([("key", pa.uint64()), ("id", pa.uint64())])
PAIR_SCHEMA = pa.schema([("part", pa.uint32()), ("i", pa.uint64()), ("j", pa.uint64())])
SIMILAR_SCHEMA = pa.schema([("i", pa.uint64()), ("j", pa.uint64()), ("jaccard", pa.float64())])
RANK_ORDER = [
    ("passes", "descending"),
    ("vendored", "ascending"),
    ("score", "descending"),
    ("stars", "descending"),
    ("repo", "ascending"),
    ("path", "ascending"),
]
# directories that hold a copy of another project's code
VENDORED = re.compile(r"(^|/)(_?vendor(ed)?|third[_-]?party(_files|_packages)?|3rdparty|externals?)/", re.I)
ROW_GROUP = 65_536
_MIX = np.uint64(0x9E3779B97F4A7C15)


def parts(cfg: CurateConfig) -> int:
    return cfg.dedup_tasks or cfg.tasks


def ranges(cfg: CurateConfig) -> int:
    """Key ranges per band, so bands x ranges is at least the number of parts."""
    return math.ceil(parts(cfg) / cfg.bands)


def sha_part(sha256: str, cfg: CurateConfig) -> int:
    return int(sha256[:8], 16) % parts(cfg)


def is_vendored(path: str) -> bool:
    return VENDORED.search(path) is not None


def is_cut(score: np.ndarray, repo: pa.Array, cut: dict | None) -> np.ndarray:
    """Whether the score cut takes each (score, repository) of a ranked repository: at or below the
    boundary (score, name), the last repository the cut takes (ScoreCutStep). Callers leave out
    the repositories without a score signal."""
    if not cut:
        return np.zeros(len(score), bool)
    le_name = pc.less_equal(repo, cut["repo"]).to_numpy(zero_copy_only=False)
    return (score < cut["score"]) | ((score == cut["score"]) & le_name)


class _Step(PipelineStep):
    type = "codemill"

    def __init__(self, cfg: CurateConfig, work: str | Path):
        super().__init__()
        self.cfg, self.work = cfg, Work(work)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        progress = Progress(self.work.progress, self.name, rank)
        self.task(rank)
        progress.advance()
        progress.flush()
        yield from ()

    def task(self, rank: int) -> None:
        raise NotImplementedError


def _cluster_rows(kind: str, cluster: list[str], repo: list, path: list, kept: list, sim) -> pa.Table:
    """Rows of dedup_clusters.parquet; `cluster` and `kept` name files as repo/path, kept None for
    a kept file."""
    return pa.table(
        {
            "kind": [kind] * len(repo),
            "cluster": cluster,
            "repo": repo,
            "path": path,
            "kept": [k is None for k in kept],
            "duplicate_of": kept,
            "jaccard": list(sim),
        },
        schema=CLUSTER_SCHEMA,
    )


def _removed(ids, stage: str, reasons, details) -> pa.Table:
    n = len(ids)
    return pa.table(
        {"id": pa.array(ids, pa.uint64()), "stage": [stage] * n, "reason": reasons, "detail": details},
        schema=REMOVED_SCHEMA,
    )


class ExactStep(_Step):
    """The score cut and exact dedup of one SHA-256 part; survivors' band keys per band."""

    name = "exact"

    def task(self, rank: int) -> None:
        t = read_part(self.work.sig_part(rank), SIG_SCHEMA)
        score = t.column("score").to_numpy()
        boundary = json.loads(self.work.cut_json.read_text())
        cut = t.column("scored").to_numpy(zero_copy_only=False) & is_cut(score, t.column("repo"), boundary)
        gone = [_removed(t.column("id").filter(cut), RepoScore.stage, ["low_repo_score"] * int(cut.sum()),
                         [f"score {s:.3f}" for s in score[cut]])]  # fmt: skip
        t = t.filter(~cut)
        rank_of = np.empty(t.num_rows, np.int64)
        rank_of[pc.sort_indices(t, sort_keys=RANK_ORDER).to_numpy()] = np.arange(t.num_rows)
        dups = dedup.exact(t.column("sha256").to_pylist(), rank_of)
        dup, kept = [r.index for r in dups], [r.kept for r in dups]
        repo, path = t.column("repo").to_pylist(), t.column("path").to_pylist()
        kept_name = [f"{repo[k]}/{path[k]}" for k in kept]
        gone.append(
            _removed(
                t.column("id").take(pa.array(dup, pa.int64())),
                ExactDedup.stage,
                ["exact_duplicate"] * len(dup),
                kept_name,
            )
        )
        atomic_parquet(
            _cluster_rows(
                "exact",
                kept_name,
                [repo[i] for i in dup],
                [path[i] for i in dup],
                kept_name,
                [1.0] * len(dup),
            ),
            self.work.clusters / f"exact-{rank:05d}.parquet",
        )
        atomic_parquet(pa.concat_tables(gone).sort_by("id"), self.work.removed / f"exact-{rank:05d}.parquet")
        survives = np.ones(t.num_rows, bool)
        survives[dup] = False
        live = t.filter(pa.array(survives & (t.column("n_shingles").to_numpy() > 0)))
        ids = live.column("id").to_numpy()
        bands = pc.list_flatten(live.column("bands")).to_numpy().reshape(len(ids), self.cfg.bands)
        for b in range(self.cfg.bands):
            order = np.argsort(bands[:, b], kind="stable")
            atomic_parquet(
                pa.table({"key": bands[order, b], "id": ids[order]}),
                self.work.band(b) / f"{rank:05d}.parquet",
                row_group_size=ROW_GROUP,
            )


class BucketStep(_Step):
    """Pairs sharing a key of one band, in one range of keys."""

    name = "buckets"

    def task(self, rank: int) -> None:
        n_ranges = ranges(self.cfg)
        band, r = divmod(rank, n_ranges)
        lo, hi = (r << 64) // n_ranges, ((r + 1) << 64) // n_ranges
        filters = pc.field("key") >= pa.scalar(lo, pa.uint64())
        if hi < 1 << 64:
            filters &= pc.field("key") < pa.scalar(hi, pa.uint64())
        t = read_tables(sorted(self.work.band(band).glob("*.parquet")), BAND_SCHEMA, filters=filters)
        keys, ids = t.column("key").to_numpy(), t.column("id").to_numpy()
        pairs = dedup.bucket_pairs(keys, ids, self.cfg.max_bucket_pairs)
        part = ((pairs[:, 0] * _MIX) ^ pairs[:, 1]) * _MIX >> np.uint64(40)
        part = (part % np.uint64(parts(self.cfg))).astype(np.uint32)
        order = np.argsort(part, kind="stable")
        atomic_parquet(
            pa.table({"part": part[order], "i": pairs[order, 0], "j": pairs[order, 1]}),
            self.work.pair_file(band, r),
            row_group_size=ROW_GROUP,
        )


class VerifyStep(_Step):
    """Exact Jaccard of one part's candidate pairs; the similar ones and their files' rank inputs."""

    name = "verify"

    def task(self, rank: int) -> None:
        files = sorted(self.work.pairs.glob("*.parquet"))
        got = read_tables(files, PAIR_SCHEMA, columns=["i", "j"], filters=[("part", "=", rank)])
        pairs = np.unique(np.stack([got.column("i").to_numpy(), got.column("j").to_numpy()], axis=1), axis=0)
        nodes, shingles = _shingled(self.work, np.unique(pairs), self.cfg.ngram)
        sims = np.array([minhash.jaccard(shingles[i], shingles[j]) for i, j in pairs.tolist()])
        similar = sims >= self.cfg.threshold
        keep = np.isin(nodes.column("id").to_numpy(), pairs[similar])
        t = nodes.filter(pa.array(keep))
        atomic_parquet(_with_rank_inputs(self.work, t), self.work.nodes / f"{rank:05d}.parquet")
        atomic_parquet(
            pa.table({"i": pairs[similar, 0], "j": pairs[similar, 1], "jaccard": sims[similar]}),
            self.work.similar / f"{rank:05d}.parquet",
        )
        atomic_json(
            self.work.similar / f"{rank:05d}.json",
            {"candidates": len(pairs), "verified_similar": int(similar.sum())},
        )


class _ShingleCache:
    """Shingle sets by file content (SHA-256 and n-gram size), kept across the verify tasks of one
    worker process: a file is a candidate in several parts (4.3 on average at 96k module rows, its
    pairs hashed to parts by both ids) and was read and hashed again in each. Bounded by bytes, the
    least recently used let go first, so a worker's memory does not grow with the input."""

    def __init__(self, limit: int):
        self.limit, self.size = limit, 0
        self.sets: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, int]) -> np.ndarray | None:
        found = self.sets.get(key)
        if found is not None:
            self.sets.move_to_end(key)
        return found

    def put(self, key: tuple[str, int], value: np.ndarray) -> None:
        if key in self.sets or value.nbytes > self.limit:
            return
        self.sets[key] = value
        self.size += value.nbytes
        while self.size > self.limit:
            self.size -= self.sets.popitem(last=False)[1].nbytes


SHINGLE_CACHE = _ShingleCache(32 << 20)


def _shingled(work: Work, ids: np.ndarray, n: int) -> tuple[pa.Table, dict[int, np.ndarray]]:
    """The files named by ids (sorted) without their text, and their shingle sets by id. Texts are
    hashed as they are read, a group of about `minhash.KEPT_POWERS` characters at a time, and let
    go: held whole, the texts, their Python strings and the sets were ~3x the sets alone (a verify
    part's candidates grow with its duplicates: 620 files at 24k module rows, 4,900 at 96k). A text
    whose set this worker has (`SHINGLE_CACHE`) is not read again."""
    columns = ["repo", "path", "quality_stage"]
    tables, shingles, texts, keys, held = [], {}, [], [], 0

    def hash_held() -> None:
        for (i, key), found in zip(keys, minhash.shingle_sets(texts, n), strict=True):
            shingles[i] = found
            SHINGLE_CACHE.put(key, found)

    for t, read_texts in _row_groups(work, ids, [*columns, "sha256"]):
        new = []
        for i, sha in zip(t.column("id").to_pylist(), t.column("sha256").to_pylist(), strict=True):
            found = SHINGLE_CACHE.get((sha, n))
            if found is None:
                new.append((i, (sha, n)))
            else:
                shingles[i] = found
        tables.append(t.drop_columns(["sha256"]))
        if new:
            texts += read_texts([i for i, _ in new])
            keys += new
            held += sum(map(len, texts[-len(new) :]))
        if held >= minhash.KEPT_POWERS:
            hash_held()
            texts, keys, held = [], [], 0
    hash_held()
    if tables:
        return pa.concat_tables(tables), shingles
    return pa.table({"id": pa.array([], pa.uint64()), **{c: [] for c in columns}}), shingles


def _row_groups(work: Work, ids: np.ndarray, columns: list[str]) -> Iterator[tuple[pa.Table, Callable]]:
    """Columns of the scan-shard rows named by ids (sorted), with their id, one table per row
    group that holds any, in id order; each with a function giving the texts of some of its ids
    (read only when asked: the text column is most of a row group)."""
    shard, row = split_ids(ids)
    for s in np.unique(shard):
        pf = pq.ParquetFile(shard_path(work.scan, s))
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        mine = row[shard == s]
        group = np.searchsorted(starts, mine, side="right") - 1
        for g in np.unique(group):
            here = ids[shard == s][group == g]
            rows = pa.array(mine[group == g] - starts[g])
            t = pf.read_row_group(int(g), columns=columns).take(rows)

            def read_texts(wanted: list[int], g=int(g), here=here, rows=rows, pf=pf) -> list[str]:
                content = pf.read_row_group(g, columns=["content"]).column("content").take(rows)
                at = {int(i): k for k, i in enumerate(here)}
                return content.take(pa.array([at[i] for i in wanted])).to_pylist()

            yield t.add_column(0, "id", pa.array(here, pa.uint64())), read_texts


def _with_rank_inputs(work: Work, t: pa.Table) -> pa.Table:
    """Add each file's repository score and stars, from the scan shard that read its repository."""
    shard, _ = split_ids(t.column("id").to_numpy())
    score, stars = np.zeros(t.num_rows), np.zeros(t.num_rows, np.int64)
    paths = t.column("path").to_pylist()
    for s in np.unique(shard):
        repos = pq.read_table(Work.repos(work.scan, s), columns=["repo", "score", "stars"])
        mine = np.flatnonzero(shard == s)
        at = pc.index_in(t.column("repo").take(pa.array(mine)), repos.column("repo")).to_numpy()
        score[mine] = repos.column("score").to_numpy()[at]
        stars[mine] = repos.column("stars").fill_null(0).to_numpy()[at]
    return pa.table(
        {
            "id": t.column("id"),
            "passes": pc.is_null(t.column("quality_stage")),
            "vendored": [is_vendored(p) for p in paths],
            "score": score,
            "stars": stars,
            "repo": t.column("repo"),
            "path": t.column("path"),
        },
        schema=NODE_SCHEMA,
    )


class ClusterStep(_Step):
    """Clusters and covering sets over every verified pair (one task)."""

    name = "cluster"

    def task(self, rank: int) -> None:
        sim = read_tables(sorted(self.work.similar.glob("*.parquet")), SIMILAR_SCHEMA)
        nodes = read_tables(sorted(self.work.nodes.glob("*.parquet")), NODE_SCHEMA)
        ids = nodes.column("id").to_numpy()
        _, first = np.unique(ids, return_index=True)
        nodes = nodes.take(pa.array(first))  # sorted by id, once each
        ids = nodes.column("id").to_numpy()
        rank = np.empty(len(ids), np.int64)
        rank[pc.sort_indices(nodes, sort_keys=RANK_ORDER).to_numpy()] = np.arange(len(ids))
        pairs = np.stack(
            [
                np.searchsorted(ids, sim.column("i").to_numpy()),
                np.searchsorted(ids, sim.column("j").to_numpy()),
            ],
            axis=1,
        ).astype(np.int64)
        removed, cluster_of = dedup.cover(pairs, sim.column("jaccard").to_numpy(), rank)
        repo, path = nodes.column("repo").to_pylist(), nodes.column("path").to_pylist()
        name = [f"{r}/{p}" for r, p in zip(repo, path, strict=True)]
        gone = sorted(removed.items())
        atomic_parquet(
            _removed(
                [ids[m] for m, _ in gone],
                NearDedup.stage,
                ["near_duplicate"] * len(gone),
                [f"{name[k]} J={s:.3f}" for _, (k, s) in gone],
            ),
            self.work.removed / "near.parquet",
        )
        kept = [name[removed[m][0]] if m in removed else None for m in range(len(ids))]
        sims = [removed[m][1] if m in removed else 1.0 for m in range(len(ids))]
        atomic_parquet(
            _cluster_rows("near", [name[c] for c in cluster_of], repo, path, kept, sims),
            self.work.clusters / "near.parquet",
        )
        stats = [json.loads(p.read_text()) for p in sorted(self.work.similar.glob("*.json"))]
        atomic_json(
            self.work.pairs_json,
            {k: sum(s[k] for s in stats) for k in ("candidates", "verified_similar")},
        )


class ScoreCutStep(_Step):
    """The last repository the score cut takes (one task). The paper drops the lowest-ranked
    fraction of the repositories; here it is the lowest fraction of the ranked ones (with kept
    files and at least one score signal: a repository whose stars, commits and test files are all
    unknown has no rank, and is never cut), and a tie is never split: the repositories with the
    boundary score stay together, kept when the cut would end inside them (the cut is for
    low-quality repositories; the tie-break was by name, arbitrary). One (score, name) pair is all
    the exact stage needs to apply the cut, whatever the number of repositories; score.json says
    how it was reached, for repos.parquet's score_reason."""

    name = "score"

    def task(self, rank: int) -> None:
        info: dict = {}
        atomic_json(self.work.cut_json, score_boundary(self.work, self.cfg, info))
        atomic_json(self.work.score_json, info)


def score_boundary(work: Work | str | Path, cfg: CurateConfig, info: dict | None = None) -> dict | None:
    """The boundary (score, name): the cut takes the ranked repositories at or below it. `info`
    gets the counts behind it and the score of a tie kept whole."""
    paths = Work.every(Work(work).scan, "repos")
    tables = []
    for p in paths:
        t = pq.read_table(p)
        if "score_signals" not in t.column_names:  # written before signals were recorded: all ranked
            t = t.append_column("score_signals", pa.array(["?"] * t.num_rows, pa.string()))
        tables.append(t.select(["repo", "score", "kept", "score_signals"]))
    t = pa.concat_tables(tables)
    t = t.filter(pc.and_(pc.greater(t.column("kept"), 0), pc.not_equal(t.column("score_signals"), "")))
    n_cut = math.floor(cfg.drop_lowest_fraction * t.num_rows)
    info = {} if info is None else info
    info.update(ranked=t.num_rows, fraction=cfg.drop_lowest_fraction, n_cut=n_cut, tie_kept=None, cut=0)
    if not n_cut:
        return None
    scores = t.column("score").to_numpy()
    s = np.partition(scores, n_cut - 1)[n_cut - 1]
    if int((scores <= s).sum()) > n_cut:  # the cut ends inside a tie: keep the tie whole
        info["tie_kept"] = float(s)
        below = scores[scores < s]
        if not len(below):
            return None
        s = below.max()
    info["cut"] = int((scores <= s).sum())
    ties = t.filter(pc.equal(t.column("score"), s)).column("repo").to_pylist()
    return {"score": float(s), "repo": max(ties)}
