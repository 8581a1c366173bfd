"""`codemill ablate RECIPE.yaml`: the paper's claims at small scale, at equal token budgets.

The runs share one corpus, tokenizer and held-out benchmarks and differ only in the data stream:
NTP only; NTP + FIM; the paper's NTP + FIM + SFIM mix; that mix with every repository in random file
order instead of Algorithm 1; that mix with FIM in place of SFIM; and our named options against the
paper's rules. Same steps, batch and sequence length, so the same number of training tokens. Each is
evaluated on the recipe's suites; the table puts them side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from codemill.errors import UserError
from codemill.eval.runner import compare
from codemill.flow.run import run
from codemill.train.metrics import loss_token_mix, mix_text

VARIANTS: dict[str, dict] = {
    "ntp": {"code_objectives": {"ntp": 1.0}},
    "ntp-fim": {"code_objectives": {"ntp": 0.5, "fim": 0.5}},
    "paper": {},  # data/config.py's defaults: SFIM 0.7, FIM 0.15, NTP 0.15 per repository, literal SFIM, Algorithm 1
    "paper-weighted-sfim": {"sfim_policy": "weighted"},  # our SFIM node policy against the paper's rule
    "paper-random-order": {"ordering": {"random": 1.0}},
    "paper-fim": {"code_objectives": {"fim": 0.85, "ntp": 0.15}},  # the paper's mix with FIM for SFIM
    "paper-sfim-anywhere": {"sfim_scope": "anywhere"},  # ours: SFIM also where no function has a node
    # ours: half the files of FIM/SFIM repositories laid out as context (<file_sep>path + code, no end
    # token) for the next, the layout editors' servers (llama-server /infill, codemill serve) build
    "paper-repo-context": {"repo_context": 0.5},
}


def ablate(recipe: str | Path, out: str | Path, console, variants: list[str] | None = None,
           seeds: list[int] | None = None, shared: str | Path | None = None,
           generation_seeds: int | None = None) -> Path:  # fmt: skip
    """Every variant at every seed (which replaces the data and training seeds), on one corpus,
    tokenizer and benchmark set (`shared`: those of an earlier ablation). With seeds, ablation.md has
    each column's mean and standard deviation over seeds and the paired per-task differences.
    `generation_seeds`: the generation suites run at the first that many seeds only, fim-loss at all
    (generation costs the most evaluation time and sits near its floor at small scale)."""
    out = Path(out)
    names = variants or list(VARIANTS)
    if unknown := set(names) - set(VARIANTS):
        raise UserError(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    shared = shared or out / "shared"
    for k, seed in enumerate(seeds or [None]):
        where = out if seed is None else out / f"seed{seed}"
        over = {} if seed is None else {"seed": seed}
        loss_only = ("fim-loss",) if generation_seeds is not None and k >= generation_seeds else None
        for name in names:
            console.rule(f"[bold magenta]ablation: {name}" + ("" if seed is None else f", seed {seed}"))
            run(recipe, where / name, console, shared=shared, data_overrides={**VARIANTS[name], **over},
                train_overrides=over, suites=loss_only)  # fmt: skip
        (where / "ablation.md").write_text(table(where, names))
        fim = [
            where / n / "eval" / "fim-eval"
            for n in names
            if (where / n / "eval" / "fim-eval" / "results.json").exists()
        ]
        if fim:  # Figure 4 across the variants, in CodeBLEU: exact match is near 0 at small scale
            compare(fim, where / "fim_codebleu_by_task_type.png", "codebleu")
    path = out / "ablation.md"
    if seeds:
        dirs = [out / f"seed{s}" for s in seeds]
        path.write_text(seeds_table(dirs, names) + "\n" + paired_table(dirs, names))
    console.print(f"ablation table: [bold]{path}[/bold]")
    return path


def seeds_table(dirs: list[Path], names: list[str]) -> str:
    """Each numeric column: mean ± standard deviation over the seeds that measured it (a column measured
    at fewer seeds says how many)."""
    measured = {name: [values(d / name) for d in dirs] for name in names}
    head = [h for h, _, m in COLUMNS if m != "mix"]
    head = [h for h in head if any(isinstance(v[h], float | int) for vs in measured.values() for v in vs)]
    lines = [f"Mean ± standard deviation over {len(dirs)} seeds.", "", "| variant | " + " | ".join(head) + " |",
             "|---" * (len(head) + 1) + "|"]  # fmt: skip
    for name in names:
        per = measured[name]
        cells = []
        for h in head:
            xs = np.asarray([v[h] for v in per if isinstance(v[h], float | int)], dtype=np.float64)
            if len(xs) == len(dirs) > 1:
                cells.append(f"{_cell(h, float(xs.mean()))} ± {_cell(h, float(xs.std(ddof=1)))}")
            elif len(xs):
                cells.append(f"{_cell(h, float(xs.mean()))} ({len(xs)} seed{'s' if len(xs) > 1 else ''})")
            else:
                cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PAIRS = (
    ("paper", "ntp-fim"),
    ("ntp-fim", "ntp"),
    ("paper", "paper-random-order"),
    ("paper", "paper-fim"),
    ("paper-weighted-sfim", "paper"),
    ("paper-repo-context", "paper"),
)


MEASURES = (  # (fim-loss item measure, label): the three claims' held-out bits per byte
    ("psm", "FIM middles, PSM"),
    ("spm", "FIM middles, SPM"),
    ("files", "files, left to right"),
    ("infile", "cross-file line, in-file context"),
    ("retrieval", "cross-file line, retrieved context"),
)


def per_item(run: Path, measure: str) -> dict[str, tuple[float, int]]:
    """(nats, bytes) per FIM task (`psm`, `spm`), held-out file (`files`) or cross-file target line
    (`infile`, `retrieval`) of a variant's fim-loss."""
    p = run / "eval" / "fim-loss" / "results.json"
    if not p.exists():
        return {}
    r = json.loads(p.read_text())
    if measure == "files":
        return {str(i): (f["nats"], f["bytes"]) for i, f in enumerate(r.get("files") or [])}
    rows = (r.get("crossfile") or []) if measure in ("infile", "retrieval") else r["tasks"]
    return {t["task_id"]: (t[f"{measure}_nats"], t["bytes"]) for t in rows if f"{measure}_nats" in t}


def paired(dirs: list[Path], a: str, b: str, measure: str, reps: int = 10_000, seed: int = 0):
    """Difference a − b in bits per byte pooled over items (their nats over their bytes, as the suite
    reports bits per byte) and seeds; its 95% bootstrap interval, resampling the seeds as whole runs
    and the items (the same for a and b): a seed's model is shared by all its items, so its effect is
    one draw, which resampling seeds item by item would average away; the share of replicates at or
    above 0 (how often a is not better); the number of items; and the difference at each seed."""
    per_seed = [(per_item(d / a, measure), per_item(d / b, measure)) for d in dirs]
    items = sorted(set.intersection(*(set(x) & set(y) for x, y in per_seed))) if per_seed else []
    if not items:
        return None
    diff = np.asarray([[x[i][0] - y[i][0] for x, y in per_seed] for i in items]) / math.log(
        2
    )  # [items, seeds]
    nbytes = np.asarray([per_seed[0][0][i][1] for i in items], dtype=np.float64)
    rng = np.random.default_rng(seed)
    n, k = diff.shape
    rows = rng.integers(0, n, size=(reps, n))
    runs = rng.integers(0, k, size=(reps, k))
    boot = diff[rows[:, :, None], runs[:, None, :]].sum(axis=(1, 2)) / (nbytes[rows].sum(axis=1) * k)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    each = (diff.sum(axis=0) / nbytes.sum()).tolist()
    return float(diff.sum() / (nbytes.sum() * k)), float(lo), float(hi), float((boot >= 0).mean()), n, each


def paired_table(dirs: list[Path], names: list[str]) -> str:
    lines = ["Paired differences in bits per byte (negative: the first variant predicts the held-out code better), "
             f"pooled over the items and {len(dirs)} seeds; 95% bootstrap intervals over seeds (as whole runs) and items.", "",
             "| comparison | measure | items | mean difference | 95% interval | P(difference ≥ 0) | per seed |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for a, b in PAIRS:
        if a not in names or b not in names:
            continue
        for measure, label in MEASURES:
            got = paired(dirs, a, b, measure)
            if got is not None:
                mean, lo, hi, p, n, each = got
                seeds = ", ".join(f"{x:+.3f}" for x in each)
                lines.append(
                    f"| {a} − {b} | {label} | {n} | {mean:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {p:.3f} | {seeds} |"
                )
    return "\n".join(lines) + "\n"


def _summary(run_dir: Path, suite_dir: str) -> dict:
    p = run_dir / "eval" / suite_dir / "results.json"
    return json.loads(p.read_text())["summary"] if p.exists() else {}


COLUMNS = [  # (header, suite directory or None for the training log, metric)
    ("train loss", None, "loss"),
    ("loss tokens", None, "mix"),
    ("FIM EM", "fim-eval", "exact_match"),
    ("FIM BLEU-4", "fim-eval", "bleu4"),
    ("FIM CodeBLEU", "fim-eval", "codebleu"),
    ("FIM ES", "fim-eval", "edit_similarity"),
    ("FIM len ratio", "fim-eval", "length_ratio"),
    ("x-file EM in-file", "crosscodeeval-infile", "exact_match"),
    ("x-file ES in-file", "crosscodeeval-infile", "edit_similarity"),
    ("x-file EM BM25", "crosscodeeval-retrieval", "exact_match"),
    ("x-file ES BM25", "crosscodeeval-retrieval", "edit_similarity"),
    ("HumanEval pass@1", "humaneval", "pass@1"),
    ("FIM bits/byte PSM", "fim-loss", "psm_bits_per_byte"),
    ("FIM bits/byte SPM", "fim-loss", "spm_bits_per_byte"),
    ("files bits/byte", "fim-loss", "left-to-right"),
    ("x-file bits/byte in-file", "fim-loss", "cross-file:infile"),
    ("x-file bits/byte BM25", "fim-loss", "cross-file:retrieval"),
]


def values(run: Path) -> dict[str, float | str | None]:
    """A variant's number (or text) per column."""
    rows = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    tail = rows[-5:]  # the mean of the last five logged losses, less noisy than the last
    summaries = {suite: _summary(run, suite) for _, suite, _ in COLUMNS if suite}
    out: dict[str, float | str | None] = {}
    for header, suite, metric in COLUMNS:
        if suite is None:
            out[header] = (
                mix_text(loss_token_mix(rows))
                if metric == "mix"
                else sum(r["loss"] for r in tail) / len(tail)
            )
        elif metric == "left-to-right":
            out[header] = summaries[suite].get(metric, {}).get("bits_per_byte")
        elif metric.startswith("cross-file:"):
            key, setting = metric.split(":")
            out[header] = summaries[suite].get(key, {}).get(f"{setting}_bits_per_byte")
        else:
            out[header] = summaries[suite].get("all", {}).get(metric)
    return out


def _cell(header: str, v) -> str:
    if v is None or isinstance(v, str):
        return v or "-"
    return (
        f"{v:.3f}"
        if "bits" in header or header == "train loss"
        else f"{v:.2f}"
        if "ratio" in header
        else f"{v:.1f}"
    )


def table(out: Path, names: list[str]) -> str:
    """One row per variant: final training loss, then the held-out scores (all languages pooled)."""
    lines = ["| variant | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name in names:
        vals = values(out / name)
        lines.append(f"| {name} | " + " | ".join(_cell(h, vals[h]) for h, _, _ in COLUMNS) + " |")
    types: dict[str, dict[str, list[tuple[float, int]]]] = {}
    for name in names:
        for key, row in _summary(out / name, "fim-eval").items():
            if " / " in key and "codebleu" in row:
                types.setdefault(key.split(" / ", 1)[1], {}).setdefault(name, []).append(
                    (row["codebleu"], row["tasks"])
                )
    if types:
        lines += ["", "FIM CodeBLEU per task type (all languages' tasks pooled; exact match is near 0 at small scale):", "",
                  "| task type | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]  # fmt: skip
        for t, by in sorted(types.items()):
            vals = [
                f"{sum(v * k for v, k in by[n]) / sum(k for _, k in by[n]):.1f}" if n in by else "-"
                for n in names
            ]
            lines.append(f"| {t} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"
