"""Run a suite: generate in batches, execute in parallel in the sandbox, write results and report.

A batch goes to the model whole: a checkpoint decodes it through serve's engine slots, each request
starting as another ends, so a batch of many tasks keeps every slot busy."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from codemill.errors import UserError, atomic_write
from codemill.eval import sandbox
from codemill.eval.metrics import pass_at_k
from codemill.eval.models import Generations, Model
from codemill.eval.suites import END, SUITES, subset
from codemill.eval.tables import paper_tables
from codemill.progress import Bar


def evaluate(
    suite: str,
    model: Model,
    out: str | Path,
    *,
    limit: int | None = None,
    workers: int | None = None,
    unsafe: bool = False,
    samples: int = 1,
    temperature: float = 0.0,
    batch: int = 64,
    max_tokens: int | None = None,
    syntax_stop: bool = False,
    console=None,
    **options,
) -> dict:
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    if not sandbox.available() and not unsafe:
        raise sandbox.SandboxUnavailable(
            "bubblewrap is not installed: install it (`make` does) or pass --unsafe to run generated code with limits only"
        )
    spec = SUITES[suite]
    if spec.measure:
        raise UserError(
            f"{suite} scores a checkpoint's loss, it generates nothing: run `codemill eval {suite}`"
        )
    try:
        loaded = spec.load(**options)
    except (ValueError, KeyError, TypeError, OSError, pa.ArrowException) as e:  # JSON, Parquet, fields
        if isinstance(e, UserError) or not options.get("data"):
            raise
        raise UserError(
            f"--data {options['data']}: not a {suite} benchmark file ({type(e).__name__}: {e}); "
            "give the file the suite's --help names, or leave --data out to use the shipped one"
        ) from None
    tasks = subset(loaded, limit)
    not_judged = 0
    if isinstance(model, Generations):  # each task the file has, as many samples as it has lines
        model.check({t.id for t in loaded}, suite)
        given = [t for t in tasks if t.id in model.by_task]
        not_judged, tasks = len(tasks) - len(given), given
        jobs = [(t, k) for t in tasks for k in range(len(model.by_task[t.id]))]
    elif samples > 1 and temperature <= 0:
        raise UserError("several samples per task need --temperature above 0")
    else:
        jobs = [(t, k) for t in tasks for k in range(samples)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    completions: list[str] = []
    with Bar(console) as bar:
        gen = bar.add_task(f"{suite}: generating with {model.name}", total=len(jobs))
        for i in range(0, len(jobs), batch):
            chunk = jobs[i : i + batch]
            cap = {"max_tokens": max_tokens} if max_tokens else {}
            requests = [
                dataclasses.replace(
                    t.request,
                    temperature=temperature,
                    seed=k,
                    syntax_stop=syntax_stop,
                    meta={**t.request.meta, "task_id": t.id},
                    **cap,
                )
                for t, k in chunk
            ]
            completions += model.complete(requests)
            bar.advance(gen, len(chunk))
        run = bar.add_task(f"{suite}: executing in the sandbox", total=len(jobs))

        def judge(args):
            (task, k), completion = args
            sample = {
                "task_id": task.id,
                "sample": k,
                "language": task.language,
                "prompt": task.request.prefix,
            }
            if task.request.suffix is not None:
                sample["suffix"] = task.request.suffix
            sample["completion"] = completion
            if task.request.meta.get("task_type"):
                sample["task_type"] = task.request.meta["task_type"]
            sample.update(spec.score(task, completion))
            if task.program is not None:
                argv, files = task.program(completion)
                o = sandbox.run(argv, files, task.limits, unsafe=unsafe, expect=END)
                sample.update(
                    verdict=o.status, stdout=o.stdout[-2000:], stderr=o.stderr[-2000:], seconds=o.seconds
                )
            bar.advance(run)
            return sample

        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            judged = list(pool.map(judge, zip(jobs, completions, strict=True)))
    summary = summarize(judged)
    results = {
        "suite": suite,
        "model": model.name,
        "settings": {
            "limit": limit,
            "samples": samples,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "syntax_stop": syntax_stop,
            "inference": model.inference,
            **({"generations": str(model.path)} if isinstance(model, Generations) else {}),
            "sandbox": "bubblewrap" if sandbox.available() else "unsafe",
            **options,
        },
        "summary": summary,
        "not_judged": not_judged,
        "samples": judged,
    }
    write_samples(judged, out / "samples.jsonl")
    atomic_write(out / "report.md", report(results), "the eval report")
    chart(results, out / "by_task_type.png")
    # last, whole or not at all: a results.json on disk means the run finished (eval compare, run)
    atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n", "the eval results")
    return results


def write_samples(judged: list[dict], path: Path) -> None:
    """One line per sample, the shape other harnesses' per-sample files have: `passed` is the
    execution verdict where the suite runs programs, else its exact match; `result` the verdict."""
    lines = []
    for s in judged:
        passed = s["verdict"] == "passed" if "verdict" in s else s.get("exact_match")
        row = {"task_id": s["task_id"], "sample": s["sample"], "completion": s["completion"],
               "passed": passed, "result": s.get("verdict")}  # fmt: skip
        lines.append(json.dumps(row) + "\n")
    atomic_write(path, "".join(lines), "the per-sample verdicts")


def _main_metric(rows: list[dict]) -> str | None:
    """The suite's main score, from any row that has one (a language whose tasks were all skipped,
    SAFIM's C# without mono, has none)."""
    return next((k for k in ("pass@1", "exact_match", "edit_similarity") if any(k in r for r in rows)), None)


def chart(results: dict, path: Path) -> Path | None:
    """A bar per language (and per task type where there are types) of the suite's main score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in results["summary"].items() if k != "all"}
    metric = _main_metric(list(rows.values()))
    if metric is None:
        return None
    names = list(rows)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4.5), dpi=110)
    ax.bar(range(len(names)), [rows[n].get(metric, 0.0) for n in names], color="#4C72B0")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 100)
    ax.set_title(f"{results['suite']}: {results['model']}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def compare(runs: list[Path], chart_path: Path | None = None, chart_metric: str = "exact_match") -> str:
    """Markdown: the paper's tables for every suite present, then per suite one column per run and
    one row per (language or task type, metric). With `chart_path`, Figure 4: a FIM-Eval metric per
    task type, a bar per run."""
    for r in runs:
        if not (Path(r) / "results.json").is_file():
            raise UserError(
                f"{r} has no results.json; give directories `codemill eval SUITE --out DIR` wrote"
            )
    loaded = [json.loads((Path(r) / "results.json").read_text()) for r in runs]
    if not loaded:
        raise UserError("name at least one eval output directory")
    lines = ["# Comparison", "", paper_tables(loaded)]
    for suite in dict.fromkeys(r["suite"] for r in loaded):
        group = [(r, p) for r, p in zip(loaded, runs, strict=True) if r["suite"] == suite]
        head = [f"{r['model']} ({Path(p).name})" for r, p in group]
        keys = list(dict.fromkeys(k for r, _ in group for k in r["summary"]))
        lines += [
            f"## {suite}",
            "",
            "| group | metric | " + " | ".join(head) + " |",
            "|---|---|" + "---|" * len(head),
        ]
        for key in keys:
            metrics = dict.fromkeys(
                m for r, _ in group for m in r["summary"].get(key, {}) if m not in ("tasks", "executed")
            )
            for m in metrics:
                vals = [r["summary"].get(key, {}).get(m) for r, _ in group]
                cells = [
                    "-"
                    if not isinstance(v, float)
                    else f"{v:.3f}"
                    if m.endswith(("bits_per_byte", "nats_per_token", "_low", "_high"))
                    else f"{v:.2f}"
                    if m == "length_ratio"
                    else f"{v:.1f}"
                    for v in vals
                ]
                lines.append(f"| {key} | {m} | " + " | ".join(cells) + " |")
        lines.append("")
    fim = [
        (r, p)
        for r, p in zip(loaded, runs, strict=True)
        if r["suite"] != "fim-loss" and any(" / " in k for k in r["summary"])
    ]
    if chart_path is not None and fim:
        _task_type_chart(fim, chart_path, chart_metric)
    return "\n".join(lines)


def _task_type_chart(runs: list[tuple[dict, Path]], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    types = sorted({k.split(" / ", 1)[1] for r, _ in runs for k in r["summary"] if " / " in k})
    fig, ax = plt.subplots(figsize=(max(7, 0.7 * len(types) + 2), 4.5), dpi=110)
    width = 0.8 / len(runs)
    for i, (r, p) in enumerate(runs):
        by_type: dict[str, list[float]] = defaultdict(list)
        for k, row in r["summary"].items():
            if " / " in k:
                by_type[k.split(" / ", 1)[1]].append(row.get(metric, 0.0))
        vals = [float(np.mean(by_type[t])) if by_type[t] else 0.0 for t in types]
        ax.bar(np.arange(len(types)) + i * width, vals, width, label=f"{r['model']} ({Path(p).name})")
    ax.set_xticks(np.arange(len(types)) + 0.4 - width / 2, types, rotation=50, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} (%), mean over languages")
    ax.set_title(f"{metric} per task type")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summarize(samples: list[dict]) -> dict:
    """Per language and overall: tasks, pass@1 (greedy: the fraction passed) and exact match."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        groups[s["language"]].append(s)
        if "task_type" in s:
            groups[f"{s['language']} / {s['task_type']}"].append(s)
    groups["all"] = samples
    out = {}
    for lang, group in groups.items():
        row: dict = {"tasks": len({s["task_id"] for s in group})}
        executed = [s for s in group if "verdict" in s]
        if executed:  # the unbiased pass@k over each task's samples
            per_task: dict[str, list[bool]] = defaultdict(list)
            for s in executed:
                per_task[s["task_id"]].append(s["verdict"] == "passed")
            n = [len(v) for v in per_task.values()]
            c = [sum(v) for v in per_task.values()]
            for k in (1, 10, 100):
                if min(n) >= k:
                    row[f"pass@{k}"] = 100 * pass_at_k(n, c, k)
            row["executed"] = len(executed)
        if any("exact_match" in s for s in group):
            row["exact_match"] = 100 * sum(s.get("exact_match", False) for s in group) / len(group)
        if any("identifier_em" in s for s in group):
            row["identifier_em"] = 100 * sum(s.get("identifier_em", False) for s in group) / len(group)
        for key in ("bleu4", "codebleu", "codebleu_codexglue", "edit_similarity", "identifier_f1"):
            if any(key in s for s in group):
                row[key] = sum(s.get(key, 0.0) for s in group) / len(group)
        if any("chars" in s for s in group):  # FIM-Eval: mean predicted chars / mean reference chars
            pred, ref = (sum(s["chars"][i] for s in group if "chars" in s) for i in (0, 1))
            row["length_ratio"] = pred / ref if ref else 0.0
            row["pred_chars"], row["ref_chars"] = pred / len(group), ref / len(group)
        out[lang] = row
    return out


def report(results: dict) -> str:
    rows = results["summary"]
    cols = sorted({k for r in rows.values() for k in r} - {"tasks"})
    n = results.get("not_judged")
    unjudged = [f"{n} of the suite's tasks (within --limit) are not in --generations' file: not judged.", ""]
    lines = [
        f"# {results['suite']}: {results['model']}",
        "",
        paper_tables([results]),
        *(unjudged if n else []),
        f"Settings: {json.dumps(results['settings'])}. pass@k is the unbiased estimator over each task's "
        "samples (greedy, one sample: the fraction of tasks whose program exits 0 in the sandbox).",
        "",
        "| language | tasks | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for lang, r in rows.items():
        vals = [f"{r[c]:.1f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        lines.append(f"| {lang} | {r['tasks']} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"
