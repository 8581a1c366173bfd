"""The curation stages as datatrove pipeline steps.

scan (one task per slice of repositories): language, license, reading, file rules, MinHash bands.
dedup (one task, global): repository score cut, exact and near dedup decisions.
refine (one task per scan shard): applies those decisions, then syntax, static analysis,
sensitive words, PII and decontamination, and writes the corpus shard.

A task writes its outputs to temporary names and renames them when done, and datatrove marks the
task complete only after that, so a killed run resumes by rerunning exactly the unfinished tasks.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from codemill.curate import dedup, filters, licenses, minhash
from codemill.curate.config import CurateConfig
from codemill.curate.decontam import Decontaminator
from codemill.curate.ledger import Ledger, Progress, atomic_json, atomic_parquet
from codemill.curate.pii import SensitiveWords, redact
from codemill.curate.sources import Unit, open_unit, read_bytes
from codemill.curate.static import analyzers
from codemill.curate.syntax import check_syntax
from codemill.langs import detect

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
        ("n_shingles", pa.int64()),
        ("bands", pa.list_(pa.uint64())),
    ]
)
CORPUS_SCHEMA = pa.schema(
    [
        ("repo", pa.string()),
        ("path", pa.string()),
        ("lang", pa.string()),
        ("content", pa.large_string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("license", pa.string()),
        ("repo_score", pa.float64()),
        ("pii", pa.int64()),
    ]
)
BATCH = 256


class ShardWriter:
    """Streams rows into a Parquet file written under a temporary name, renamed on close."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema = path, schema
        self.tmp = path.with_name(path.name + ".tmp")
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.tmp.replace(self.path)


class ScanStep(PipelineStep):
    name = "scan"
    type = "codemill"

    def __init__(self, units: list[Unit], cfg: CurateConfig, work: str):
        super().__init__()
        self.units, self.cfg, self.work = units, cfg, Path(work)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        cfg, out = self.cfg, self.work / "scan"
        out.mkdir(parents=True, exist_ok=True)
        ledger, progress = Ledger(), Progress(self.work / "progress", "scan", rank)
        perms = minhash.permutations(cfg.num_perm, cfg.seed)
        writer = ShardWriter(out / f"files-{rank:05d}.parquet", SCAN_SCHEMA)
        repos = []
        for unit in self.units[rank::world_size]:
            meta, files = open_unit(unit, cfg)
            permissive = licenses.is_permissive(meta.license, cfg)
            stats = {"files": 0, "bytes": 0, "test_files": 0, "kept": 0}
            for f in files:
                stats["files"] += 1
                stats["bytes"] += f.size
                stats["test_files"] += bool(TEST_PATH.search(f.path))
                row = self._file(f, unit.name, meta.license, permissive, ledger, perms)
                if row:
                    writer.add(row)
                    stats["kept"] += 1
            repos.append(
                {
                    "repo": unit.name,
                    "kind": unit.kind,
                    "source": meta.source,
                    "license": meta.license,
                    "license_source": meta.license_source,
                    "permissive": permissive,
                    "stars": meta.stars,
                    "commits": meta.commits,
                    **stats,
                }
            )
            progress.advance()
        writer.close()
        atomic_parquet(pa.Table.from_pylist(repos, schema=REPO_SCHEMA), out / f"repos-{rank:05d}.parquet")
        ledger.save(out, rank)
        progress.flush()
        yield from ()

    def _file(self, f, repo, license, permissive, ledger, perms) -> dict | None:
        cfg = self.cfg
        if f.error:
            ledger.drop("read", f.error, f.size, repo, f.path)
            return None
        ledger.keep("read", f.size)
        lang = detect(f.path)
        if lang is None or lang.kind not in cfg.keep_kinds:
            reason = "unknown_language" if lang is None else f"not_code:{lang.kind}"
            ledger.drop("language", reason, f.size, repo, f.path, lang.name if lang else "")
            return None
        ledger.keep("language", f.size)
        if not permissive:
            reason = "unknown_license" if not license else "not_permissive"
            if license or cfg.drop_unknown_license:
                ledger.drop("license", reason, f.size, repo, f.path, license or "")
                return None
        ledger.keep("license", f.size)
        if f.size > cfg.max_bytes:
            ledger.drop("file_rules", "too_large", f.size, repo, f.path, f"{f.size} bytes")
            return None
        data, err = read_bytes(f, cfg.max_bytes)
        if err:
            ledger.drop("file_rules", err, f.size, repo, f.path)
            return None
        text, reason = filters.check_file(f.path, lang.name, data, cfg)
        if text is None:
            excerpt = data[:2000].decode("utf-8", "replace") if reason not in ("binary",) else ""
            ledger.drop("file_rules", reason, len(data), repo, f.path, excerpt=excerpt)
            return None
        ledger.keep("file_rules", len(data))
        shingles = minhash.ngram_hashes(text, cfg.ngram)
        bands = minhash.band_hashes(minhash.signature(shingles, perms), cfg.bands, cfg.rows)
        return {
            "repo": repo,
            "path": f.path,
            "lang": lang.name,
            "content": text,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "license": license,
            "n_shingles": len(shingles),
            "bands": bands.tolist(),
        }


REPO_SCHEMA = pa.schema(
    [
        ("repo", pa.string()),
        ("kind", pa.string()),
        ("source", pa.string()),
        ("license", pa.string()),
        ("license_source", pa.string()),
        ("permissive", pa.bool_()),
        ("stars", pa.int64()),
        ("commits", pa.int64()),
        ("files", pa.int64()),
        ("bytes", pa.int64()),
        ("test_files", pa.int64()),
        ("kept", pa.int64()),
    ]
)


def repo_scores(repos: pa.Table, cfg: CurateConfig) -> tuple[dict[str, float], set[str]]:
    """Score of every repository, and the lowest-scored fraction among those with kept files."""
    w = cfg.score_weights
    scores = {}
    for r in repos.to_pylist():
        scores[r["repo"]] = (
            w["stars"] * math.log1p(r["stars"] or 0)
            + w["commits"] * math.log1p(r["commits"] or 0)
            + w["tests"] * math.log1p(r["test_files"] or 0)
        )
    eligible = sorted((scores[r["repo"]], r["repo"]) for r in repos.to_pylist() if r["kept"])
    cut = math.floor(cfg.drop_lowest_fraction * len(eligible))
    return scores, {name for _, name in eligible[:cut]}


class DedupStep(PipelineStep):
    """Global decisions: which files the score cut, exact dedup and near dedup remove."""

    name = "dedup"
    type = "codemill"

    def __init__(self, cfg: CurateConfig, work: str):
        super().__init__()
        self.cfg, self.work = cfg, Path(work)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        cfg, scan, out = self.cfg, self.work / "scan", self.work / "dedup"
        out.mkdir(parents=True, exist_ok=True)
        repos = pa.concat_tables([pq.read_table(p) for p in sorted(scan.glob("repos-*.parquet"))])
        scores, cut = repo_scores(repos, cfg)
        stars = {r["repo"]: r["stars"] or 0 for r in repos.to_pylist()}
        shards = sorted(scan.glob("files-*.parquet"))
        cols = ["repo", "path", "sha256", "n_shingles", "bands"]
        parts = [
            pq.read_table(p, columns=cols).append_column(
                "shard", pa.array([i] * pq.ParquetFile(p).metadata.num_rows, pa.int64())
            )
            for i, p in enumerate(shards)
        ]
        files = pa.concat_tables(parts) if parts else pa.table({c: [] for c in [*cols, "shard"]})
        repo, path = files.column("repo").to_pylist(), files.column("path").to_pylist()
        shard = files.column("shard").to_numpy()
        row = np.concatenate([np.arange(t.num_rows) for t in parts]) if parts else np.empty(0, np.int64)
        n = len(repo)
        order = sorted(range(n), key=lambda i: (-scores[repo[i]], -stars[repo[i]], repo[i], path[i]))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)

        removed: dict[int, tuple[str, str, str]] = {}
        for i in range(n):
            if repo[i] in cut:
                removed[i] = ("repo_score", "low_repo_score", f"score {scores[repo[i]]:.3f}")
        alive = np.array([i not in removed for i in range(n)], dtype=bool)
        sha = files.column("sha256").to_pylist()
        clusters = []
        idx_alive = np.flatnonzero(alive)
        for r in dedup.exact([sha[i] for i in idx_alive], rank[idx_alive]):
            i, k = int(idx_alive[r.index]), int(idx_alive[r.kept])
            removed[i] = ("exact_dedup", r.reason, f"{repo[k]}/{path[k]}")
            clusters.append(self._cluster_row("exact", k, i, k, 1.0, repo, path))
        alive[list(removed)] = False
        n_sh = files.column("n_shingles").to_numpy()
        bands = np.array(files.column("bands").to_pylist(), dtype=np.uint64).reshape(n, cfg.bands)
        pairs = dedup.candidate_pairs(bands, alive & (n_sh > 0), cfg.max_bucket_pairs)
        loader = _ShingleLoader(shards, shard, row, cfg.ngram, pairs)
        near, similar, cluster_of = dedup.near(pairs, loader, rank, cfg.threshold)
        near_by_index = {r.index: r for r in near}
        for i, cluster in sorted(cluster_of.items()):
            r = near_by_index.get(i)
            if r:
                removed[i] = ("near_dedup", r.reason, f"{repo[r.kept]}/{path[r.kept]} J={r.similarity:.3f}")
            kept, sim = (r.kept, r.similarity) if r else (i, 1.0)
            clusters.append(self._cluster_row("near", cluster, i, kept, sim, repo, path))
        atomic_parquet(
            pa.Table.from_pylist(
                [
                    {"shard": int(shard[i]), "row": int(row[i]), "stage": s, "reason": rs, "detail": d}
                    for i, (s, rs, d) in sorted(removed.items())
                ],
                schema=pa.schema(
                    [
                        ("shard", pa.int64()),
                        ("row", pa.int64()),
                        ("stage", pa.string()),
                        ("reason", pa.string()),
                        ("detail", pa.string()),
                    ]
                ),
            ),
            out / "removed.parquet",
        )
        atomic_parquet(pa.Table.from_pylist(clusters, schema=CLUSTER_SCHEMA), out / "clusters.parquet")
        scored = repos.append_column(
            "score", pa.array([scores[r] for r in repos.column("repo").to_pylist()], pa.float64())
        )
        scored = scored.append_column(
            "score_cut", pa.array([r in cut for r in repos.column("repo").to_pylist()])
        )
        atomic_parquet(scored, out / "repos.parquet")
        atomic_json(out / "pairs.json", {"candidates": len(pairs), "verified_similar": len(similar)})
        yield from ()

    @staticmethod
    def _cluster_row(kind, cluster, i, kept, sim, repo, path) -> dict:
        return {
            "kind": kind,
            "cluster": f"{repo[cluster]}/{path[cluster]}",
            "repo": repo[i],
            "path": path[i],
            "kept": kept == i,
            "duplicate_of": None if kept == i else f"{repo[kept]}/{path[kept]}",
            "jaccard": sim,
        }


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


class _ShingleLoader:
    """Shingle sets of the files in candidate pairs only, each shard read once."""

    def __init__(self, shards: list[Path], shard: np.ndarray, row: np.ndarray, ngram: int, pairs):
        needed = sorted({i for pair in pairs for i in pair})
        self.cache: dict[int, np.ndarray] = {}
        for s, path in enumerate(shards):
            mine = [i for i in needed if shard[i] == s]
            if mine:
                content = pq.read_table(path, columns=["content"]).column("content")
                for i in mine:
                    self.cache[i] = minhash.ngram_hashes(content[int(row[i])].as_py(), ngram)

    def __call__(self, i: int) -> np.ndarray:
        return self.cache[i]


class RefineStep(PipelineStep):
    name = "refine"
    type = "codemill"

    def __init__(self, cfg: CurateConfig, work: str, out: str):
        super().__init__()
        self.cfg, self.work, self.out = cfg, Path(work), Path(out)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        cfg = self.cfg
        ledger, progress = Ledger(), Progress(self.work / "progress", "refine", rank)
        removed_t = pq.read_table(self.work / "dedup" / "removed.parquet", filters=[("shard", "=", rank)])
        removed = {r["row"]: r for r in removed_t.to_pylist()}
        scores = {
            r["repo"]: r["score"]
            for r in pq.read_table(
                self.work / "dedup" / "repos.parquet", columns=["repo", "score"]
            ).to_pylist()
        }
        words = list(cfg.sensitive_words)
        if cfg.sensitive_words_file:
            words += [w.strip() for w in Path(cfg.sensitive_words_file).read_text().splitlines() if w.strip()]
        sensitive = SensitiveWords(words)
        decont = Decontaminator(cfg.decontam_ngram, cfg.decontam_humaneval, cfg.decontam_files)
        static = analyzers(cfg.drop_severities) if cfg.static_analysis else {}
        writer = ShardWriter(self.out / f"files-{rank:05d}.parquet", CORPUS_SCHEMA)
        src = pq.ParquetFile(self.work / "scan" / f"files-{rank:05d}.parquet")
        base = 0
        for batch in src.iter_batches(
            batch_size=BATCH, columns=["repo", "path", "lang", "content", "size", "sha256", "license"]
        ):
            rows = batch.to_pylist()
            alive = []
            for k, r in enumerate(rows):
                if self._dedup_and_syntax(base + k, r, removed, ledger):
                    alive.append(r)
            base += len(rows)
            for r in self._static(alive, static, ledger):
                if self._content(r, sensitive, decont, ledger):
                    r["repo_score"] = scores.get(r["repo"], 0.0)
                    writer.add(r)
            progress.advance(len(rows))
        writer.close()
        ledger.save(self.work / "refine", rank)
        progress.flush()
        yield from ()

    def _dedup_and_syntax(self, i: int, r: dict, removed: dict, ledger: Ledger) -> bool:
        gone = removed.get(i)
        for stage in ("repo_score", "exact_dedup", "near_dedup"):
            if gone and gone["stage"] == stage:
                ledger.drop(
                    stage, gone["reason"], r["size"], r["repo"], r["path"], gone["detail"], r["content"]
                )
                return False
            ledger.keep(stage, r["size"])
        reason = check_syntax(r["lang"], r["path"], r["content"], self.cfg.parse_timeout_s)
        if reason:
            ledger.drop("syntax", reason, r["size"], r["repo"], r["path"], excerpt=r["content"])
            return False
        ledger.keep("syntax", r["size"])
        return True

    def _static(self, rows: list[dict], static: dict, ledger: Ledger) -> list[dict]:
        defects: dict[int, list] = {}
        for analyzer in {id(a): a for a in static.values()}.values():
            idx = [k for k, r in enumerate(rows) if r["lang"] in analyzer.langs]
            for k, found in zip(
                idx, analyzer.analyze([(rows[k]["path"], rows[k]["content"]) for k in idx]), strict=True
            ):
                defects[k] = found
        kept = []
        for k, r in enumerate(rows):
            found = [d for d in defects.get(k, []) if d.severity in self.cfg.drop_severities]
            if found:
                d = found[0]
                ledger.drop(
                    "static_analysis",
                    f"{d.category}:{d.rule}",
                    r["size"],
                    r["repo"],
                    r["path"],
                    f"line {d.line}: {d.message}",
                    r["content"],
                )
            else:
                ledger.keep("static_analysis", r["size"])
                kept.append(r)
        return kept

    def _content(self, r: dict, sensitive: SensitiveWords, decont: Decontaminator, ledger: Ledger) -> bool:
        word = sensitive.find(r["content"])
        if word:
            ledger.drop(
                "sensitive_words", "sensitive_word", r["size"], r["repo"], r["path"], word, r["content"]
            )
            return False
        ledger.keep("sensitive_words", r["size"])
        r["pii"] = 0
        if self.cfg.pii:
            red = redact(r["content"])
            if red.counts:
                r["content"] = red.text
                r["pii"] = sum(red.counts.values())
                ledger.extra.update({f"pii:{k}": v for k, v in red.counts.items()})
        ledger.keep("pii", r["size"], len(r["content"].encode("utf-8")))
        task = decont.match(r["content"])
        if task:
            ledger.drop(
                "decontamination", "benchmark_overlap", r["size"], r["repo"], r["path"], task, r["content"]
            )
            return False
        ledger.keep("decontamination", r["size"])
        r["size"] = len(r["content"].encode("utf-8"))
        return True
