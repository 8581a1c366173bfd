"""`codemill curate`: expand sources, run scan → dedup → refine on a datatrove executor, then
assemble the corpus directory (shards, repos.parquet, dedup_clusters.parquet, drops.parquet,
manifest.json)."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from codemill.curate.config import CurateConfig
from codemill.curate.ledger import STAGES, atomic_json, merge
from codemill.curate.sources import expand
from codemill.curate.steps import DedupStep, RefineStep, ScanStep

TOOLS = (
    "codemill",
    "datatrove",
    "tree-sitter",
    "ruff",
    "scancode-toolkit-mini",
    "pyahocorasick",
    "xxhash",
    "pyarrow",
    "numpy",
)


def make_executor(kind: str, pipeline, tasks: int, workers: int, logs: Path):
    """A datatrove executor: 'local' (processes on this machine) or 'ray' (a running Ray cluster)."""
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs)
        )
    if kind == "ray":
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(
            pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs), cpus_per_task=1
        )
    raise ValueError(f"unknown executor {kind!r}: use 'local' or 'ray'")


def curate(
    sources: list[str], out: str | Path, cfg: CurateConfig, executor: str = "local", quiet: bool = False
) -> dict:
    out = Path(out)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    units = [u for s in sources for u in expand(s, cfg)]
    if not units:
        raise ValueError(f"no repositories found in {sources}")
    _check_resume(work, sources, cfg, units)
    n_tasks = max(1, min(cfg.tasks, len(units)))
    _clear_partial(out, work)
    stages = [
        ("scan", [ScanStep(units, cfg, str(work))], n_tasks, len(units)),
        ("dedup", [DedupStep(cfg, str(work))], 1, 1),
        ("refine", [RefineStep(cfg, str(work), str(out))], n_tasks, None),
    ]
    t0 = time.time()
    timings = {}
    for name, pipeline, tasks, total in stages:
        if total is None:
            total = sum(pq.ParquetFile(p).metadata.num_rows for p in (work / "scan").glob("files-*.parquet"))
        start = time.time()
        ex = make_executor(executor, pipeline, tasks, cfg.workers, work / "logs" / name)
        _run_with_progress(ex, name, total, work, quiet)
        timings[name] = round(time.time() - start, 2)
    manifest = _finalize(out, work, sources, cfg, units, n_tasks, executor, timings, time.time() - t0)
    return manifest


def _check_resume(work: Path, sources: list[str], cfg: CurateConfig, units) -> None:
    """A resumed run must see the same repositories and settings, or its shards would not match."""
    key = {"sources": sources, "config": cfg.to_dict(), "repositories": [u.name for u in units]}
    path = work / "run.json"
    if path.exists():
        if json.loads(path.read_text()) != json.loads(json.dumps(key)):
            raise SystemExit(
                f"{work.parent} holds a run with other sources or settings; use a new --out or delete it"
            )
    else:
        atomic_json(path, key)


def _clear_partial(out: Path, work: Path) -> None:
    for p in list(out.glob("*.tmp")) + list(work.rglob("*.tmp")):
        p.unlink()


def _run_with_progress(ex, name: str, total: int, work: Path, quiet: bool) -> None:
    """Run an executor while a bar sums the tasks' progress files; datatrove's log goes to a file."""
    log = work / "logs" / f"{name}.stderr"
    log.parent.mkdir(parents=True, exist_ok=True)
    done = threading.Event()
    unit = {"scan": "repos", "dedup": "step"}.get(name, "files")
    with Progress(
        TextColumn(f"[bold]{name:<7}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        disable=quiet,
    ) as bar:
        task = bar.add_task(name, total=total)

        def poll():
            while not done.wait(0.3):
                bar.update(task, completed=_progress(work, name))

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            with _stderr_to(log):
                ex.run()
        except Exception as e:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(
                f"stage {name} failed: {e}\n--- {log} (tail) ---\n{tail}\nFix the cause and rerun the same command: finished tasks are kept."
            ) from e
        finally:
            done.set()
            thread.join()
        incomplete = ex.get_incomplete_ranks()
        if incomplete:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"stage {name}: tasks {incomplete} did not finish; see {log}\n{tail}")
        bar.update(task, completed=total)


def _progress(work: Path, name: str) -> int:
    n = 0
    for p in (work / "progress").glob(f"{name}-*"):
        with contextlib.suppress(OSError, ValueError):
            n += int(p.read_text() or 0)
    return n


@contextlib.contextmanager
def _stderr_to(path: Path):
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in TOOLS:
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def _finalize(out: Path, work: Path, sources, cfg, units, n_tasks, executor, timings, seconds) -> dict:
    ledgers = sorted((work / "scan").glob("ledger-*.json")) + sorted((work / "refine").glob("ledger-*.json"))
    stages, extra = merge(ledgers)
    drops = [
        pq.read_table(p)
        for p in sorted((work / "scan").glob("drops-*.parquet"))
        + sorted((work / "refine").glob("drops-*.parquet"))
    ]
    if drops:
        pq.write_table(pa.concat_tables(drops), out / "drops.parquet", compression="zstd")
    repos = pq.read_table(work / "dedup" / "repos.parquet")
    kept_per_repo: dict[str, int] = {}
    files_out = bytes_out = 0
    for p in sorted(out.glob("files-*.parquet")):
        t = pq.read_table(p, columns=["repo", "size"])
        for r in t.column("repo").to_pylist():
            kept_per_repo[r] = kept_per_repo.get(r, 0) + 1
        files_out += t.num_rows
        bytes_out += sum(t.column("size").to_pylist())
    repos = repos.drop_columns(["kept"]).append_column(
        "kept_files",
        pa.array([kept_per_repo.get(r, 0) for r in repos.column("repo").to_pylist()], pa.int64()),
    )
    pq.write_table(repos, out / "repos.parquet", compression="zstd")
    shutil.copyfile(work / "dedup" / "clusters.parquet", out / "dedup_clusters.parquet")
    rlist = repos.to_pylist()
    manifest = {
        "format": "codemill-corpus/1",
        "sources": sources,
        "executor": executor,
        "tasks": n_tasks,
        "config": cfg.to_dict(),
        "tools": _versions(),
        "seconds": round(seconds, 2),
        "stage_seconds": timings,
        "repositories": {
            "in": len(units),
            "not_permissive": sum(not r["permissive"] for r in rlist),
            "score_cut": sum(r["score_cut"] for r in rlist),
            "with_kept_files": sum(r["kept_files"] > 0 for r in rlist),
        },
        "files": {"out": files_out, "bytes_out": bytes_out},
        "stages": {s: {**stages[s], "drops": dict(sorted(stages[s]["drops"].items()))} for s in STAGES},
        "pii_replacements": {k.split(":", 1)[1]: v for k, v in sorted(extra.items()) if k.startswith("pii:")},
        "near_dedup_pairs": json.loads((work / "dedup" / "pairs.json").read_text()),
    }
    atomic_json(out / "manifest.json", manifest)
    return manifest
