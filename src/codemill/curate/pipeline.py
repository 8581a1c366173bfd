"""`codemill curate`: expand sources, run [shuffle →] scan → score → exact → buckets → verify →
cluster → refine on a datatrove executor, then assemble the corpus directory (shards,
repos.parquet, dedup_clusters.parquet, drops.parquet, manifest.json), streaming every table."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata as md
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from codemill.curate.checks import STAGES
from codemill.curate.config import EXECUTION, CurateConfig
from codemill.curate.corpus import shards
from codemill.curate.dedup_steps import (
    BucketStep,
    ClusterStep,
    ExactStep,
    ScoreCutStep,
    VerifyStep,
    parts,
    ranges,
)
from codemill.curate.io import atomic_json, parquet_options
from codemill.curate.layout import Work
from codemill.curate.ledger import merge
from codemill.curate.sources import Unit, expand
from codemill.curate.steps import RefineStep, ScanStep
from codemill.curate.table_sources import ShuffleStep, n_buckets, pieces
from codemill.errors import DiskFull, UserError, disk_full, disk_full_cause, short_of_space
from codemill.progress import Bar

TOOLS = (
    "codemill",
    "datatrove",
    "tree-sitter",
    "ruff",
    "scancode-toolkit-mini",
    "hyperscan",
    "xxhash",
    "pyarrow",
    "numpy",
)


STEP_MODULES = ("codemill.curate.steps", "codemill.curate.dedup_steps", "codemill.curate.table_sources")


MMAP_THRESHOLD = 1 << 20  # glibc: allocations from 1 MB up are mapped, and unmapped when freed


def bound_allocators() -> None:
    """Allocator settings under which a process's memory follows what it holds, not what it held.

    Arrow allocates from malloc: its default pool here, mimalloc, keeps what the reading threads
    freed, and a verify worker grew task after task (323 -> 368 MB over 8 tasks, flat at ~165 MB
    with malloc or jemalloc); the driver, which runs the one-task stages (score, cluster) and
    reads every table at the end, grew 108 -> 212 MB in `_finalize` alone (126 with malloc). Only
    the environment reaches the pool the Parquet readers use, so it is set before the first Arrow
    allocation and before the workers start (a local Ray cluster inherits it too).
    glibc raises its mmap threshold to the largest block freed (up to 32 MB), after which freed
    batch buffers stay in the heap in fragments: a shuffle task writing 207 bucket files a flush
    peaked at 208 MB, 150 MB with the threshold fixed at 1 MB, and no slower. The variable is read
    when a process starts (the workers); the driver sets it with mallopt."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL("libc.so.6").mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD


def make_executor(kind: str, pipeline, tasks: int, workers: int, logs: Path, cfg: CurateConfig | None = None,
                  depends=None):  # fmt: skip
    """A datatrove executor: 'local' (processes on this machine), 'ray' (a running Ray cluster) or
    'slurm' (an array job per stage, after `depends`'s job succeeded)."""
    bound_allocators()
    if kind == "local":
        import multiprocess
        from datatrove.executor import LocalPipelineExecutor

        # every stage starts a pool from datatrove's fork server: with the steps' modules imported
        # there once, a worker starts without importing them again (was ~7 s of CPU on `installed`)
        multiprocess.set_forkserver_preload(["__main__", *STEP_MODULES])
        # datatrove runs a one-worker stage inside this process, which then keeps what the stage
        # freed: the one-task stages (score, cluster) get a pool, so their memory goes with their
        # worker (the driver grew 167 -> 221 MB in cluster at 96k module rows)
        pool = min(workers, tasks) if workers == 1 or tasks > 1 else 2
        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=pool, logging_dir=str(logs))
    if kind == "ray":
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(
            pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs), cpus_per_task=1
        )
    if kind == "slurm":
        from codemill.curate.slurm import Slurm

        cfg = cfg or CurateConfig()
        return Slurm(
            pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs), time=cfg.slurm_time,
            partition=cfg.slurm_partition, cpus_per_task=cfg.slurm_cpus_per_task,
            mem_per_cpu_gb=cfg.slurm_mem_per_cpu_gb, qos=cfg.slurm_qos, depends=depends,
            job_name=f"codemill-{logs.name}", venv_path=str(Path(sys.prefix) / "bin" / "activate"),
            mail_type="NONE", sbatch_args={"signal": "USR1@60"},
        )  # fmt: skip
    raise UserError(f"unknown executor {kind!r}: use 'local', 'ray' or 'slurm'")


def curate(
    sources: list[str], out: str | Path, cfg: CurateConfig, executor: str = "local", quiet: bool = False
) -> dict:
    bound_allocators()  # before the first Arrow allocation (tables' metadata in _stages)
    out = Path(out)
    work = Work.of(out)
    units = [u for s in sources for u in expand(s, cfg)]
    if not units:
        raise UserError(f"no repositories found in {sources}")
    if done := _finished(out, sources, cfg, units):
        return done
    work.root.mkdir(parents=True, exist_ok=True)
    _check_resume(work, sources, cfg, units)
    _clear_partial(out, work)
    stages, units = _stages(units, cfg, work, out)
    t0 = time.time()
    timings = _run_on_slurm(stages, cfg, work, quiet) if executor == "slurm" else {}
    for name, step, tasks, total in [] if executor == "slurm" else stages:
        start = time.time()
        ex = make_executor(executor, [step], tasks, cfg.workers, work.logs(name))
        _run_with_progress(ex, name, _total(total, work), work, quiet)
        timings[name] = round(time.time() - start, 2)
    n_tasks = {name: tasks for name, _, tasks, _ in stages}
    return _finalize(out, work, sources, cfg, units, n_tasks, executor, timings, time.time() - t0)


def slurm_scripts(sources: list[str], out: str | Path, cfg: CurateConfig) -> list[tuple[str, str]]:
    """(stage, batch script) as `--executor slurm` would submit them, each after the one before
    (`--dependency=afterok`); nothing is submitted (`codemill curate --dry-run`)."""
    out = Path(out)
    work = Work.of(out)
    units = [u for s in sources for u in expand(s, cfg)]
    if not units:
        raise UserError(f"no repositories found in {sources}")
    scripts = []
    for i, (name, step, tasks, _) in enumerate(_stages(units, cfg, work, out)[0]):
        logs = work.logs(name)
        ex = make_executor("slurm", [step], tasks, cfg.workers, logs, cfg)
        run = f"srun -l -n 1 launch_pickled_pipeline {logs / 'executor.pik'}"
        after = f" --dependency=afterok:<job of {scripts[-1][0]}>" if i else ""
        head = f"# sbatch --export=ALL,RUN_OFFSET=0{after}: {tasks} task(s)\n"
        scripts.append(
            (name, head + ex.get_launch_file_contents(ex.get_sbatch_args(min(tasks, ex.max_array_size)), run))
        )
    return scripts


def _run_on_slurm(stages: list, cfg: CurateConfig, work: Work, quiet: bool) -> dict[str, float]:
    """Submit every stage with unfinished tasks as an array job after the previous stage's job, then
    wait for each in turn with a bar over its tasks' progress files (the work directory must be on a
    file system the nodes share). A stage whose tasks did not all finish cancels the later jobs."""
    log = work.stage_log("slurm")
    log.parent.mkdir(parents=True, exist_ok=True)
    executors, prev = [], None
    with contextlib.nullcontext() if os.environ.get("CODEMILL_VERBOSE") else _stderr_to(log):
        for name, step, tasks, _ in stages:
            prev = make_executor("slurm", [step], tasks, cfg.workers, work.logs(name), cfg, depends=prev)
            try:
                prev.run()  # sbatch, or nothing when every task of the stage is complete
            except (subprocess.CalledProcessError, OSError) as e:
                sent = [str(ex.job_id) for ex in executors if ex.job_id not in (None, -1)]
                if sent:  # the stages before would run for nothing
                    subprocess.run(["scancel", *sent], capture_output=True)
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise UserError(f"sbatch refused stage {name}: {e}\n{tail}") from e
            executors.append(prev)
    jobs = [str(ex.job_id) for ex in executors if ex.job_id not in (None, -1)]
    timings = {}
    for (name, _, _, total), ex in zip(stages, executors, strict=True):
        start = time.time()
        unit = {"shuffle": "pieces", "scan": "units", "refine": "files"}.get(name, "tasks")
        with Bar(transient=False, disable=quiet) as bar:
            total = _total(total, work)
            task = bar.add_task(f"[bold]{name:<7}[/bold] {unit} (job {ex.job_id})", total=total)
            try:
                while ex.job_id != -1 and _queued(str(ex.job_id)):
                    bar.update(task, completed=_progress(work, name))
                    time.sleep(1)
            except KeyboardInterrupt:
                raise UserError(
                    f"stopped waiting; Slurm jobs {', '.join(jobs)} go on: rerun the same command when "
                    f"`squeue -j {','.join(jobs)}` lists none, to assemble the corpus (finished tasks are skipped)"
                ) from None
            if incomplete := ex.get_incomplete_ranks():
                subprocess.run(["scancel", *jobs], capture_output=True)
                logs = sorted(Path(ex.slurm_logs_folder).glob("*.out"), key=lambda p: p.stat().st_mtime)
                tail = logs[-1].read_text(errors="replace")[-3000:] if logs else ""
                raise UserError(
                    f"stage {name}: tasks {incomplete} did not finish (later jobs cancelled); Slurm's logs "
                    f"are in {ex.slurm_logs_folder}\n{tail}\nFix the cause and rerun the same command: finished tasks are kept."
                )
            bar.update(task, completed=total)
        timings[name] = round(time.time() - start, 2)
    return timings


def _queued(job: str) -> bool:
    """Whether Slurm still lists a job (any task of its array); an unreachable controller counts as yes."""
    r = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True)
    if r.returncode:
        return "Invalid job id" not in r.stderr
    return bool(r.stdout.strip())


def _total(total: int | None, work: Work) -> int:
    """A stage's progress total; refine's (None) is the files the scan kept, known once it ran."""
    if total is None:
        total = sum(pq.ParquetFile(p).metadata.num_rows for p in shards(work.scan))
    return total


def require_files(manifest: dict, out: Path) -> None:
    """A corpus with no file is an error the user must see, not an empty input for the next stage."""
    if manifest["files"]["out"]:
        return
    drops = Counter()
    for s in manifest["stages"].values():
        drops.update(s["drops"])
    top = ", ".join(f"{k} {v:,}" for k, v in drops.most_common(3)) or "no file was found"
    raise UserError(
        f"no file survived curation ({top}); `codemill corpus stats {out}` shows what was dropped and why"
    )


def _stages(units: list[Unit], cfg: CurateConfig, work: Work, out: Path) -> tuple[list, list[Unit]]:
    """(name, step, tasks, progress total) in order, and the units the scan reads."""
    w = work.root
    stages = []
    tables = [u for u in units if u.kind == "table"]
    units = [u for u in units if u.kind != "table"]
    table_rows = 0
    found = []
    for u in tables:
        try:
            found.append(pieces(u.locator, cfg))
        except (pa.ArrowException, OSError) as e:  # counted and skipped, like a broken archive
            units.append(Unit("broken", u.name, u.locator, (f"broken_table:{type(e).__name__}",)))
    if found:
        all_pieces = [p for ps, _, _ in found for p in ps]
        buckets = n_buckets(sum(n for _, n, _ in found), cfg)
        table_rows = sum(rows for *_, rows in found)
        tasks = max(1, min(cfg.tasks, len(all_pieces)))
        stages.append(("shuffle", ShuffleStep(all_pieces, buckets, cfg, w), tasks, len(all_pieces)))
        units += [Unit("bucket", f"table-bucket-{b:05d}", str(work.bucket(b))) for b in range(buckets)]
    n_tasks = max(1, min(cfg.tasks, len(units)))
    cfg = replace(cfg, dedup_tasks=cfg.dedup_tasks or max(cfg.tasks, math.ceil(table_rows / cfg.part_files)))
    n_parts, n_buckets_tasks = parts(cfg), cfg.bands * ranges(cfg)
    stages += [
        ("scan", ScanStep(units, cfg, w), n_tasks, len(units)),
        ("score", ScoreCutStep(cfg, w), 1, 1),
        ("exact", ExactStep(cfg, w), n_parts, n_parts),
        ("buckets", BucketStep(cfg, w), n_buckets_tasks, n_buckets_tasks),
        ("verify", VerifyStep(cfg, w), n_parts, n_parts),
        ("cluster", ClusterStep(cfg, w), 1, 1),
        ("refine", RefineStep(cfg, w, str(out)), n_tasks, None),
    ]
    return stages, units


def _finished(out: Path, sources: list[str], cfg: CurateConfig, units: list[Unit]) -> dict | None:
    """The manifest of a finished run of these sources, settings and repositories (marked
    `already_complete`); a corpus of another run, or one whose work directory is gone, is refused:
    its shards would mix into the new corpus."""
    path, key = out / "manifest.json", Work.of(out).run_json
    if path.exists():
        manifest = json.loads(path.read_text())
        old = {k: v for k, v in manifest.get("config", {}).items() if k not in EXECUTION}
        same = manifest.get("sources") == sources and old == json.loads(json.dumps(cfg.identity()))
        if same and key.exists():
            same = json.loads(key.read_text()).get("repositories") == [u.name for u in units]
        if same:
            return manifest | {"already_complete": True}
    if key.exists():
        return None  # an interrupted run, or another one: _check_resume decides
    if path.exists() or shards(out):
        raise UserError(
            f"{out} holds a corpus of other sources or settings (or one whose .work was deleted); "
            "its shards would mix into this one: use a new --out or delete it"
        )
    return None


def _check_resume(work: Work, sources: list[str], cfg: CurateConfig, units) -> None:
    """A resumed run must see the same repositories and settings, or its shards would not match
    (how it executes aside: workers, Slurm's options)."""
    key = {"sources": sources, "config": cfg.identity(), "repositories": [u.name for u in units]}
    path = work.run_json
    if path.exists():
        if json.loads(path.read_text()) != json.loads(json.dumps(key)):
            raise UserError(
                f"{work.root.parent} holds a run with other sources or settings; use a new --out or delete it"
            )
    else:
        atomic_json(path, key)


def _clear_partial(out: Path, work: Work) -> None:
    for p in list(out.glob("*.tmp")) + list(work.root.rglob("*.tmp")):
        p.unlink()


def _run_with_progress(ex, name: str, total: int, work: Work, quiet: bool) -> None:
    """Run an executor while a bar sums the tasks' progress files; datatrove's log goes to a file
    (`codemill -v` leaves it on the console)."""
    log = work.stage_log(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    done = threading.Event()
    unit = {"shuffle": "pieces", "scan": "units", "refine": "files"}.get(name, "tasks")
    with Bar(transient=False, disable=quiet) as bar:
        task = bar.add_task(f"[bold]{name:<7}[/bold] {unit}", total=total)

        def poll():
            while not done.wait(0.3):
                bar.update(task, completed=_progress(work, name))

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            with contextlib.nullcontext() if os.environ.get("CODEMILL_VERBOSE") else _stderr_to(log):
                ex.run()
        except DiskFull as e:  # a task's writer said what and where
            raise DiskFull(str(e)) from None
        except UserError as e:  # what the user can fix: its message, without the worker's traceback
            raise UserError(
                f"stage {name}: {e} (rerun the same command once fixed: finished tasks are kept)"
            ) from None
        except Exception as e:
            if (cause := disk_full_cause(e)) is not None:
                raise disk_full(f"the files of stage {name}", cause.filename or work.root) from None
            if short_of_space(work.root):  # a writer's error that lost its errno
                raise disk_full(f"the files of stage {name}", work.root) from None
            e.add_note(f"stage {name} failed; datatrove's log: {log}")
            raise  # a bug keeps its type and traceback
        finally:
            done.set()
            thread.join()
        incomplete = ex.get_incomplete_ranks()
        if incomplete and short_of_space(work.root):  # its traceback may not have fitted in the log either
            raise disk_full(f"the files of stage {name}", work.root)
        if incomplete:
            tail = log.read_text(errors="replace")[-3000:]
            raise UserError(f"stage {name}: tasks {incomplete} did not finish; see {log}\n{tail}")
        bar.update(task, completed=total)


def _progress(work: Work, name: str) -> int:
    n = 0
    for p in work.progress.glob(f"{name}-*"):
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


def _concat(paths: list[Path], dest: Path) -> int:
    """Stream tables into one Parquet file, 8,192 rows at a time (whole drop tables, with their
    excerpts, grew the driver by 36 MB at 96k module rows); returns the row count."""
    if not paths:
        return 0
    tmp = dest.with_name(dest.name + ".tmp")
    n = 0
    schema = pq.read_schema(paths[0])
    with pq.ParquetWriter(tmp, schema, **parquet_options(schema)) as w:
        for p in paths:
            for batch in pq.ParquetFile(p).iter_batches(batch_size=8192, use_threads=False):
                w.write_batch(batch)
                n += batch.num_rows
    tmp.replace(dest)
    return n


def _finalize(out: Path, work: Work, sources, cfg, units, n_tasks, executor, timings, seconds) -> dict:
    ledgers = [p for d in (work.scan, work.refine) for p in Work.every(d, "ledger", ".json")]
    stages, extra = merge(ledgers)
    for p in Work.every(work.shuffle, "broken", ".json"):  # table pieces that could not be read
        for b in json.loads(p.read_text()):
            reason = "broken_table:" + b["error"].split(":", 1)[0]
            stages["read"]["files_in"] += 1
            stages["read"]["drops"][reason] = stages["read"]["drops"].get(reason, 0) + 1
    _concat(
        [p for d in (work.scan, work.refine) for p in Work.every(d, "drops")],
        out / "drops.parquet",
    )
    _concat(
        [*Work.every(work.clusters, "exact"), work.clusters / "near.parquet"], out / "dedup_clusters.parquet"
    )
    repo_tables = Work.every(work.refine, "repos")
    n_repos = _concat(repo_tables, out / "repos.parquet")
    counts = {"not_permissive": 0, "score_cut": 0, "score_unranked": 0, "with_kept_files": 0}
    for p in repo_tables:
        t = pq.read_table(p, columns=["permissive", "score_cut", "score_signals", "kept_files"])
        counts["not_permissive"] += pc.sum(pc.invert(t.column("permissive"))).as_py() or 0
        counts["score_cut"] += pc.sum(t.column("score_cut")).as_py() or 0
        counts["score_unranked"] += pc.sum(pc.equal(t.column("score_signals"), "")).as_py() or 0
        counts["with_kept_files"] += pc.sum(pc.greater(t.column("kept_files"), 0)).as_py() or 0
    last = stages[STAGES[-1]]
    manifest = {
        "format": "codemill-corpus/1",
        "sources": sources,
        "executor": executor,
        "tasks": n_tasks["scan"],
        "stage_tasks": n_tasks,
        "config": cfg.to_dict(),
        "tools": _versions(),
        "seconds": round(seconds, 2),
        "stage_seconds": timings,
        "repositories": {"in": n_repos, **counts},
        "files": {"out": last["files_out"], "bytes_out": last["bytes_out"]},
        "stages": {s: {**stages[s], "drops": dict(sorted(stages[s]["drops"].items()))} for s in STAGES},
        "pii_replacements": {k.split(":", 1)[1]: v for k, v in sorted(extra.items()) if k.startswith("pii:")},
        "near_dedup_pairs": json.loads(work.pairs_json.read_text()),
    }
    atomic_json(out / "manifest.json", manifest)
    return manifest
