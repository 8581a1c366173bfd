"""The stages that read and write files, as datatrove pipeline steps; dedup_steps.py has the rest.

scan (one task per slice of repositories): the scan checks, the quality checks' verdicts (applied
    in refine; dedup ranks by them), MinHash signatures, a signature row per file routed to its
    exact-dedup part, and one row per repository with its score and the signals it rests on.
refine (one task per scan shard): applies the dedup decisions, runs the refine checks and writes the
    corpus shard and its repositories' rows.

A task writes its outputs to temporary names and renames them when done, and datatrove marks the
task complete only after that, so a killed run resumes by rerunning exactly the unfinished tasks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from codemill.curate import licenses, minhash
from codemill.curate.checks import (
    QUALITY,
    REFINE,
    SCAN,
    CheckedFile,
    precheck,
    quality_failure,
    run_checks,
    verdicts_from,
)
from codemill.curate.config import CurateConfig
from codemill.curate.corpus import shard_path
from codemill.curate.decontam import Decontaminator
from codemill.curate.dedup_steps import SIG_SCHEMA, is_cut, is_vendored, sha_part
from codemill.curate.io import BATCH, PartitionWriter, Progress, ShardWriter, atomic_parquet
from codemill.curate.layout import Work, file_id
from codemill.curate.ledger import Ledger
from codemill.curate.sources import Unit, repositories

TEST_PATH = re.compile(
    r"(^|/)(tests?|__tests__|spec|testing)/|(^|/)test_[^/]*\.py$|_test\.(py|go|rs|cc|cpp|c)$"
    r"|(Test|Tests|Spec)\.(java|kt|cs|scala|swift)$|\.(test|spec)\.(js|jsx|ts|tsx|mjs)$",
)
SCAN_SCHEMA = pa.schema(
    [
        ("repo", pa.string()),
        ("path", pa.string()),
        ("lang", pa.string()),
        ("content", pa.large_string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("license", pa.string()),
        ("benchmark", pa.string()),  # the benchmark task it overlaps, applied by the decontamination stage
        # the QUALITY check it fails (null: passes), taken at scan, applied in refine
        ("quality_stage", pa.string()),
        ("quality_reason", pa.string()),
        ("quality_detail", pa.string()),
    ]
)
SCAN_ONLY = ("benchmark", "quality_stage", "quality_reason", "quality_detail")
CORPUS_SCHEMA = pa.schema(
    [
        *(f for f in SCAN_SCHEMA if f.name not in SCAN_ONLY),
        ("repo_score", pa.float64()),
        ("pii", pa.int64()),
    ]
)
REPO_SCHEMA = pa.schema(
    [
        ("repo", pa.string()),
        ("kind", pa.string()),
        ("source", pa.string()),
        ("license", pa.string()),
        ("license_source", pa.string()),
        ("code_license", pa.string()),  # the license as it reads for code (licenses.code_license)
        ("permissive", pa.bool_()),
        ("stars", pa.int64()),
        ("commits", pa.int64()),
        ("files", pa.int64()),
        ("bytes", pa.int64()),
        ("test_files", pa.int64()),
        ("kept", pa.int64()),
        ("score", pa.float64()),
        ("score_signals", pa.string()),  # the signals the score rests on: stars, commits, tests
    ]
)
SIGNALS = ("stars", "commits", "tests")


def repo_score(stars: int | None, commits: int | None, test_files: int, cfg: CurateConfig) -> float:
    w = cfg.score_weights
    return (
        w["stars"] * math.log1p(stars or 0)
        + w["commits"] * math.log1p(commits or 0)
        + w["tests"] * math.log1p(test_files or 0)
    )


def score_signals(stars: int | None, commits: int | None, test_files: int, kind: str) -> list[str]:
    """The signals known for a repository. Stars and commits are known when the source gives them;
    test files are counted in a whole repository, but an installed distribution or the standard
    library ships its tests or not at the packager's choice, so there none found is not a zero.
    A repository with no signal is not ranked: the score cut never takes it (ScoreCutStep)."""
    known = {
        "stars": stars is not None,
        "commits": commits is not None,
        "tests": test_files > 0 or kind not in ("dist", "stdlib"),
    }
    return [s for s in SIGNALS if known[s]]


class _Pending:
    """Files that passed the scan checks, waiting for their quality verdicts and rows, with the
    repository each belongs to; repositories in reading order until all their files are written."""

    FILES = 1024  # files, or
    BYTES = 8 << 20  # bytes, held at most (the scan task's memory: their text and bytes)

    def __init__(self):
        self.docs: list[CheckedFile] = []
        self.owners: list[dict] = []
        self.repos: list[dict] = []
        self.bytes = 0

    def add(self, repo: dict, docs: list[CheckedFile]) -> None:
        self.docs += docs
        self.owners += [repo] * len(docs)
        self.bytes += sum(d.size for d in docs)

    def full(self) -> bool:
        return len(self.docs) >= self.FILES or self.bytes >= self.BYTES


class ScanStep(PipelineStep):
    name = "scan"
    type = "codemill"

    def __init__(self, units: list[Unit], cfg: CurateConfig, work: str | Path):
        super().__init__()
        self.units, self.cfg, self.work = units, cfg, Work(work)
        # built once here and sent to the tasks with the step: reading every benchmark takes ~0.5 s
        self.decont = Decontaminator(
            cfg.decontam_ngram, cfg.decontam_humaneval, cfg.decontam_files, cfg.decontam_shipped
        )

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        cfg, out = self.cfg, self.work.scan
        out.mkdir(parents=True, exist_ok=True)
        ledger, progress = Ledger(out, rank), Progress(self.work.progress, "scan", rank)
        checks = [c(cfg) for c in SCAN]
        quality = [c(cfg) for c in QUALITY]
        perms = minhash.permutations(cfg.num_perm, cfg.seed)
        writer = ShardWriter(shard_path(out, rank), SCAN_SCHEMA)
        sigs = PartitionWriter(self.work.sig, f"{rank:05d}", SIG_SCHEMA, cfg.buffer_mb << 20)
        repos: list[dict] = []
        pending = _Pending()
        for unit in self.units[rank::world_size]:
            for meta, files in repositories(unit, cfg):
                code_license = licenses.code_license(meta.license)
                permissive = licenses.is_permissive(code_license, cfg)
                stats = {"files": 0, "bytes": 0, "test_files": 0, "kept": 0}
                repo = {"rows": [], "done": False}
                pending.repos.append(repo)
                files = iter(files)
                while batch := list(itertools.islice(files, BATCH)):
                    docs = [
                        CheckedFile(meta.name, f.path, f.size, code_license, permissive, raw=f) for f in batch
                    ]
                    stats["files"] += len(docs)
                    stats["bytes"] += sum(f.size for f in batch)
                    stats["test_files"] += sum(bool(TEST_PATH.search(f.path)) for f in batch)
                    pending.add(repo, run_checks(docs, checks, ledger))
                    if pending.full():
                        self._flush(pending, quality, rank, writer, perms, sigs, repos)
                score = repo_score(meta.stars, meta.commits, stats["test_files"], cfg)
                signals = score_signals(meta.stars, meta.commits, stats["test_files"], unit.kind)
                repo.update(done=True, score=score, stars=meta.stars or 0, scored=bool(signals))
                repo["record"] = {
                    "repo": meta.name,
                    "kind": "table" if unit.kind == "bucket" else unit.kind,
                    "source": meta.source,
                    "license": meta.license,
                    "license_source": meta.license_source,
                    "code_license": code_license,
                    "permissive": permissive,
                    "stars": meta.stars,
                    "commits": meta.commits,
                    **stats,
                    "score": score,
                    "score_signals": ",".join(signals),
                }
                if pending.full():
                    self._flush(pending, quality, rank, writer, perms, sigs, repos)
            progress.advance()
        self._flush(pending, quality, rank, writer, perms, sigs, repos)
        writer.close()
        sigs.close()
        atomic_parquet(pa.Table.from_pylist(repos, schema=REPO_SCHEMA), Work.repos(out, rank))
        ledger.save()
        progress.flush()
        yield from ()

    def _flush(
        self, pending: _Pending, quality, rank: int, writer: ShardWriter, perms, sigs, repos: list
    ) -> None:
        """The quality verdicts of the pending files, taken together (one analyzer run for many
        small repositories: ruff costs ~7 ms a start), then their rows; a repository whose files
        are all written is routed and recorded."""
        precheck(pending.docs, quality)
        for repo, row in zip(pending.owners, self._write(pending.docs, rank, writer, perms), strict=True):
            repo["rows"].append(row)
        pending.docs, pending.owners, pending.bytes = [], [], 0
        while pending.repos and pending.repos[0]["done"]:
            repo = pending.repos.pop(0)
            repo["record"]["kept"] = len(repo["rows"])
            self._route(sigs, repo["rows"], repo["score"], repo["stars"], repo["scored"])
            repos.append(repo["record"])

    def _write(self, docs: list[CheckedFile], rank: int, writer: ShardWriter, perms) -> list[dict]:
        """Writes the kept files and returns their signature rows; MinHash and decontamination run on
        groups of files at once, each group's text bounded so the hashing arrays stay small."""
        rows = []
        for lo, hi in minhash.spans([len(d.text) for d in docs]):
            group = docs[lo:hi]
            tokens, words, bounds = minhash.batch_tokens([d.text for d in group])
            shingles, sb = minhash.batch_ngrams(tokens, bounds, self.cfg.ngram)
            sigs = minhash.signatures(shingles, sb, perms)
            bands = minhash.band_hashes(sigs, self.cfg.bands, self.cfg.rows)
            tasks = self.decont.match(tokens, words, bounds)
            for k, d in enumerate(group):
                sha = hashlib.sha256(d.data).hexdigest()
                sig = {"id": file_id(rank, writer.n), "sha256": sha, "repo": d.repo, "path": d.path}
                failure = quality_failure(d)
                stage, reason, detail = failure or (None, None, None)
                writer.add(
                    {"repo": d.repo, "path": d.path, "lang": d.lang, "content": d.text, "size": d.size}
                    | {"sha256": sha, "license": d.license, "benchmark": tasks[k]}
                    | {"quality_stage": stage, "quality_reason": reason, "quality_detail": detail}
                )
                rows.append(
                    sig
                    | {"n_shingles": int(sb[k + 1] - sb[k]), "bands": bands[k]}
                    | {"passes": failure is None, "vendored": is_vendored(d.path)}
                )
        return rows

    def _route(self, sigs: PartitionWriter, rows: list[dict], score: float, stars: int, scored: bool) -> None:
        by_part: dict[int, list[dict]] = {}
        for r in rows:
            by_part.setdefault(sha_part(r["sha256"], self.cfg), []).append(
                r | {"score": score, "stars": stars, "scored": scored}
            )
        for part, rs in by_part.items():
            sigs.add(part, pa.Table.from_pylist(rs, schema=SIG_SCHEMA))


class RefineStep(PipelineStep):
    name = "refine"
    type = "codemill"

    def __init__(self, cfg: CurateConfig, work: str | Path, out: str | Path):
        super().__init__()
        self.cfg, self.work, self.out = cfg, Work(work), Path(out)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        ledger, progress = (
            Ledger(self.work.refine, rank),
            Progress(self.work.progress, "refine", rank),
        )
        removed = self._removed(rank)
        checks = [c(self.cfg) for c in REFINE]
        repos = pq.read_table(Work.repos(self.work.scan, rank))
        score = dict(zip(repos.column("repo").to_pylist(), repos.column("score").to_pylist(), strict=True))
        kept: dict[str, int] = {}
        writer = ShardWriter(shard_path(self.out, rank), CORPUS_SCHEMA)
        src = pq.ParquetFile(shard_path(self.work.scan, rank))
        row = 0
        for batch in src.iter_batches(batch_size=BATCH):
            docs = []
            for r in batch.to_pylist():
                d = CheckedFile(
                    r["repo"], r["path"], r["size"], r["license"], lang=r["lang"], text=r["content"]
                )
                d.sha256, d.removed, d.benchmark = r["sha256"], removed.get(row), r["benchmark"]
                stage = r["quality_stage"]
                d.verdicts = verdicts_from(stage and (stage, r["quality_reason"], r["quality_detail"]))
                docs.append(d)
                row += 1
            for d in run_checks(docs, checks, ledger):
                kept[d.repo] = kept.get(d.repo, 0) + 1
                writer.add(
                    {"repo": d.repo, "path": d.path, "lang": d.lang, "content": d.text, "size": d.size}
                    | {"sha256": d.sha256, "license": d.license, "repo_score": score[d.repo], "pii": d.pii}
                )
            progress.advance(batch.num_rows)
        writer.close()
        atomic_parquet(self._repos(repos, kept), Work.repos(self.work.refine, rank))
        ledger.save()
        progress.flush()
        yield from ()

    def _removed(self, shard: int) -> dict[int, tuple[str, str, str]]:
        """This shard's files that the dedup stages removed: row -> (stage, reason, detail)."""
        lo, hi = file_id(shard, 0), file_id(shard + 1, 0)
        out = {}
        for p in sorted(self.work.removed.glob("*.parquet")):
            t = pq.read_table(p, filters=[("id", ">=", lo), ("id", "<", hi)])
            for i, s, r, d in zip(
                *(t.column(c).to_pylist() for c in ("id", "stage", "reason", "detail")), strict=True
            ):
                out[i - lo] = (s, r, d)
        return out

    def _repos(self, repos: pa.Table, kept: dict[str, int]) -> pa.Table:
        """This shard's repositories as repos.parquet has them, with why the score cut took each
        or not."""
        cut = json.loads(self.work.cut_json.read_text())
        info = json.loads(self.work.score_json.read_text())
        has_files = pc.greater(repos.column("kept"), 0).to_numpy(zero_copy_only=False)
        scored = pc.not_equal(repos.column("score_signals"), "").to_numpy(zero_copy_only=False)
        taken = has_files & scored & is_cut(repos.column("score").to_numpy(), repos.column("repo"), cut)
        names = repos.column("repo").to_pylist()
        reasons = [
            score_reason(score, signals, files, cut_, cut, info)
            for score, signals, files, cut_ in zip(
                repos.column("score").to_pylist(),
                repos.column("score_signals").to_pylist(),
                has_files.tolist(),
                taken.tolist(),
                strict=True,
            )
        ]
        return (
            repos.drop_columns(["kept"])
            .append_column("score_cut", pa.array(taken, pa.bool_()))
            .append_column("score_reason", pa.array(reasons, pa.string()))
            .append_column("kept_files", pa.array([kept.get(n, 0) for n in names], pa.int64()))
        )


def score_reason(
    score: float, signals: str, has_files: bool, taken: bool, cut: dict | None, info: dict
) -> str:
    """Why the score cut took a repository or left it (repos.parquet's score_reason)."""
    missing = [s for s in SIGNALS if s not in signals.split(",")]
    if not has_files:
        return "not ranked: no file passed the scan"
    if not signals:
        return f"not ranked: no signal ({', '.join(missing)} unknown); the cut never takes it"
    among = f"the lowest {info['fraction']:.0%} of {info['ranked']} ranked repositories"
    gaps = f"; {', '.join(missing)} unknown" if missing else ""
    if taken:
        return f"cut: score {score:.3f} is in {among} (boundary {cut['score']:.3f}){gaps}"
    tie = info.get("tie_kept")
    if tie is not None and score == tie:
        return f"kept: tied at {score:.3f} where {among} ends; a tie is never split{gaps}"
    if cut is None and tie is None:
        return f"kept: {among} is less than one repository{gaps}"
    return f"kept: score {score:.3f} above {among}{gaps}"
