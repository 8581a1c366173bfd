"""`codemill ablate RECIPE.yaml`: the paper's claims at small scale, at equal token budgets.

The runs share one corpus, tokenizer and held-out benchmarks and differ only in the data stream:
NTP only; NTP + FIM; the paper's NTP + FIM + SFIM mix; that mix with every repository in random file
order instead of Algorithm 1; that mix with FIM in place of SFIM; and our named options against the
paper's rules. Same steps, batch and sequence length, so the same windows; the tokens the loss is
taken on differ (a FIM/SFIM document that cannot be cut pads, and pads are not trained), so the table
reports them. Each is evaluated on the recipe's suites; the table puts them side by side, with reference
rows (untrained, unigram, gzip / xz) and paired intervals, verdicts and power (flow/stats.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from codemill.curate.corpus import corpus_rows
from codemill.errors import UserError
from codemill.eval.runner import compare
from codemill.flow.layout import RunLayout
from codemill.flow.run import run
from codemill.flow.stats import (
    MARGIN,
    Paired,
    compressed_bits_per_byte,
    paired_interval,
    power,
    seeds_for,
    task_repository,
    verdict,
)
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
            RunLayout(where / n).eval_dir("fim-eval")
            for n in names
            if RunLayout(where / n).eval_results("fim-eval").exists()
        ]
        if fim:  # Figure 4 across the variants, in CodeBLEU: exact match is near 0 at small scale
            compare(fim, where / "fim_codebleu_by_task_type.png", "codebleu")
    path = out / "ablation.md"
    first = (out if not seeds else out / f"seed{seeds[0]}") / names[0]
    files, file_repos, refs = [], None, ""
    if RunLayout(first).eval_results("fim-loss").exists():
        files, file_repos = heldout_files(RunLayout(shared), len(_fim_loss(first).get("files") or []))
        refs = "\n" + reference_table(references(RunLayout(shared), first, out / "references", files))
    if seeds:
        dirs = [out / f"seed{s}" for s in seeds]
        types = [(a, b) for a, b in (("ntp-fim", "ntp"), ("paper", "paper-fim")) if {a, b} <= set(names)]
        text = seeds_table(dirs, names) + refs + "\n" + paired_table(dirs, names, file_repos)
        path.write_text(text + ("\n" + type_table(dirs, types) if types and file_repos is not None else ""))
    else:
        (out / "ablation.md").write_text(table(out, names) + refs)
    console.print(f"ablation table: [bold]{path}[/bold]")
    return path


def parse_seeds(text: str | None) -> list[int] | None:
    """`--seeds 0,1,2`: whole numbers separated by commas (None: one run per variant, unseeded)."""
    try:
        return [int(x) for x in text.split(",")] if text else None
    except ValueError:
        raise UserError(f"--seeds {text!r}: give whole numbers separated by commas, e.g. 0,1,2") from None


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


# The claims' pre-specified comparisons (A, B, measure), one each, read against MARGIN; every other
# row is secondary, and the table says how many intervals it prints.
PRIMARY = {
    ("ntp-fim", "ntp", "files"): "FIM for free: a cost left to right would be positive",
    ("ntp-fim", "ntp", "psm"): "FIM training helps infilling",
    ("paper", "paper-fim", "psm"): "SFIM improves infilling over FIM in the same mix",
    ("paper", "paper-random-order", "infile"): "Algorithm 1 helps cross-file completion",
}


def _fim_loss(run: Path) -> dict:
    p = RunLayout(run).eval_results("fim-loss")
    return json.loads(p.read_text()) if p.exists() else {}


def per_item(
    run: Path, measure: str, file_repos: list[str] | None = None
) -> dict[str, tuple[float, int, str]]:
    """(nats, bytes, repository) per FIM task (`psm`, `spm`), held-out file (`files`) or cross-file
    target line (`infile`, `retrieval`) of a variant's fim-loss. A file's repository comes from
    `file_repos` (fim-loss records only its bytes); without it each file is its own group."""
    r = _fim_loss(run)
    if not r:
        return {}
    if measure == "files":
        files = r.get("files") or []
        repos = (
            file_repos
            if file_repos and len(file_repos) == len(files)
            else [str(i) for i in range(len(files))]
        )
        return {str(i): (f["nats"], f["bytes"], repos[i]) for i, f in enumerate(files)}
    rows = (r.get("crossfile") or []) if measure in ("infile", "retrieval") else r["tasks"]
    return {
        t["task_id"]: (t[f"{measure}_nats"], t["bytes"], task_repository(t["task_id"]))
        for t in rows
        if f"{measure}_nats" in t
    }


def paired(dirs: list[Path], a: str, b: str, measure: str, file_repos: list[str] | None = None,
           tasks: set[str] | None = None) -> Paired | None:  # fmt: skip
    """Difference a − b in bits per byte on the items both measured at every seed (restricted to
    `tasks` when given), pooled by bytes as the suite pools them, with flow/stats.py's interval: a t
    interval over the per-seed differences (a seed's model is one draw shared by all its items) plus
    the items resampled by held-out repository."""
    per_seed = [(per_item(d / a, measure, file_repos), per_item(d / b, measure, file_repos)) for d in dirs]
    items = sorted(set.intersection(*(set(x) & set(y) for x, y in per_seed))) if per_seed else []
    items = [i for i in items if tasks is None or i in tasks]
    if not items:
        return None
    diff = np.asarray([[x[i][0] - y[i][0] for x, y in per_seed] for i in items]) / math.log(
        2
    )  # [items, seeds]
    first = per_seed[0][0]
    return paired_interval(diff, [first[i][1] for i in items], [first[i][2] for i in items])


def paired_table(dirs: list[Path], names: list[str], file_repos: list[str] | None = None) -> str:
    """Every pair and measure: the interval, its verdict (flow/stats.py `verdict`, the rule written in
    docs/results.md), the power against MARGIN at these seeds and the seeds that reach 80%."""
    rows = []
    for a, b in PAIRS:
        if a not in names or b not in names:
            continue
        for measure, label in MEASURES:
            if (got := paired(dirs, a, b, measure, file_repos)) is None:
                continue
            primary = " (primary)" if (a, b, measure) in PRIMARY else ""
            k = len(got.each)
            pw = f"{power(got.seed_sd, k, got.item_se):.2f}" if k > 1 else "-"
            need = (seeds_for(got.seed_sd, got.item_se) or ">200") if k > 1 else "-"
            rows.append(
                f"| {a} − {b}{primary} | {label} | {got.items} ({got.groups}) | {got.mean:+.4f} | "
                f"[{got.low:+.4f}, {got.high:+.4f}] | {verdict(got.low, got.high)} | {pw} | {need} | "
                + ", ".join(f"{x:+.3f}" for x in got.each)
                + " |"
            )
    head = [
        f"Paired differences A − B in bits per byte (negative: A predicts the held-out code better), pooled "
        f"over the items and {len(dirs)} seed{'s' if len(dirs) > 1 else ''}; 95% intervals: t over the per-seed differences plus the "
        f"items resampled by held-out repository (flow/stats.py). Verdicts against a margin of {MARGIN} bits "
        f"per byte (docs/results.md, Method); power: of detecting a difference of {MARGIN} at these seeds. "
        f"{len(rows)} intervals: at 95% each, about {len(rows) / 20:.1f} would exclude 0 by chance were no "
        f"variant different; the primary rows are the claims' pre-specified comparisons.",
        "",
        "| comparison | measure | items (repositories) | mean difference | 95% interval | verdict | power at "
        f"{MARGIN} | seeds for 80% | per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


def type_table(dirs: list[Path], pairs: list[tuple[str, str]]) -> str:
    """FIM middles (PSM) per task type for each pair, each a secondary comparison with its verdict; the
    count of intervals says how many chance detections to expect."""
    r = _fim_loss(dirs[0] / pairs[0][0])
    types: dict[str, set[str]] = {}
    for t in r.get("tasks", []):
        types.setdefault(t["task_type"], set()).add(t["task_id"])
    lines = [f"FIM middles (PSM) per task type, A − B bits per byte over {len(dirs)} seeds; "
             f"{len(types) * len(pairs)} intervals, about {len(types) * len(pairs) / 20:.1f} detections by chance:", "",
             "| task type | tasks | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " |", "|---" * (len(pairs) + 2) + "|"]  # fmt: skip
    for name, ids in sorted(types.items()):
        cells = []
        for a, b in pairs:
            got = paired(dirs, a, b, "psm", tasks=ids)
            cells.append(
                "-"
                if got is None
                else f"{got.mean:+.3f} [{got.low:+.3f}, {got.high:+.3f}] {verdict(got.low, got.high)}"
            )
        lines.append(f"| {name} | {len(ids)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def heldout_files(shared: RunLayout, n: int) -> tuple[list[str], list[str] | None]:
    """The held-out files fim-loss scored (eval/loss.py `heldout_texts`, the same sample) and their
    repositories, which fim-loss does not record: the interval resamples files by repository."""

    from codemill.eval.loss import heldout_texts

    corpus, held = shared.corpus, shared.heldout_repos
    if not n or not held.exists():
        return [], None
    texts = heldout_texts(corpus, held, n)
    wanted, repo_of = set(texts), {}
    repo_of.update((c, r) for r, c in corpus_rows(corpus, ["repo", "content"], 1024) if c in wanted)
    return texts, [repo_of[t] for t in texts]


def references(shared: RunLayout, first: Path, out: Path, files: list[str]) -> dict:
    """Bits per byte of what needs no training, on the same held-out items: the untrained
    initialisation and a unigram model of the training corpus (eval/loss.py, scored once, kept in
    `out`), and gzip / xz on the held-out files: how far the variants are from a compressor. `first`:
    the first variant's run, whose checkpoint gives the shape and whose fim-loss the task count."""
    from codemill.eval.loss import measure

    path = out / "references.json"
    if path.exists():
        return json.loads(path.read_text())
    crossfile = shared.crossfile_bench if shared.crossfile_bench.is_dir() else None
    r = measure(RunLayout(first).final, out / "fim-loss", data=shared.fim_bench, corpus=shared.corpus,
                files=len(files), crossfile=crossfile, limit=len(_fim_loss(first)["tasks"]), baselines=True)  # fmt: skip
    refs = {"untrained": r["baselines"]["untrained"], "unigram": r["baselines"]["unigram"],
            "compressors": compressed_bits_per_byte(files)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(refs, indent=1) + "\n")
    return refs


def reference_table(refs: dict) -> str:
    """Reference rows beside the variants' table: what the held-out bits per byte mean at this scale."""

    def cell(summary: dict, *keys: str) -> str:
        for k in keys[:-1]:
            summary = summary.get(k, {})
        v = summary.get(keys[-1])
        return f"{v:.3f}" if isinstance(v, float | int) else "-"

    lines = ["Reference rows, bits per byte on the same held-out items (no training):", "",
             "| reference | FIM bits/byte PSM | files bits/byte | x-file bits/byte in-file |", "|---|---|---|---|"]  # fmt: skip
    for name, key in (
        ("untrained initialisation", "untrained"),
        ("unigram of the training corpus", "unigram"),
    ):
        s = refs.get(key, {})
        lines.append(f"| {name} | {cell(s, 'all', 'psm_bits_per_byte')} | {cell(s, 'left-to-right', 'bits_per_byte')} "
                     f"| {cell(s, 'cross-file', 'infile_bits_per_byte')} |")  # fmt: skip
    for name, v in refs.get("compressors", {}).items():
        lines.append(f"| {name}, each file alone | - | {v:.3f} | - |")
    return "\n".join(lines) + "\n"


def _summary(run_dir: Path, suite_dir: str) -> dict:
    p = RunLayout(run_dir).eval_results(suite_dir)
    return json.loads(p.read_text())["summary"] if p.exists() else {}


COLUMNS = [  # (header, suite directory or None for the training log, metric)
    ("train loss", None, "loss"),
    ("loss tokens", None, "mix"),
    ("loss tokens (M)", None, "count"),  # trained tokens: FIM pads (objective 0) are not in the loss
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
    rows = [json.loads(x) for x in RunLayout(run).metrics.read_text().splitlines()]
    # the mean of the last five logged losses, less noisy than the last (skipped steps have none)
    tail = [r for r in rows if r["loss"] is not None][-5:] or [{"loss": float("nan")}]
    summaries = {suite: _summary(run, suite) for _, suite, _ in COLUMNS if suite}
    out: dict[str, float | str | None] = {}
    for header, suite, metric in COLUMNS:
        if suite is None:
            out[header] = (
                mix_text(loss_token_mix(rows))
                if metric == "mix"
                else sum((r.get(f"tokens_{o}") or 0) for r in rows for o in ("sfim", "fim", "ntp")) / 1e6
                if metric == "count"
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
        if "bits" in header or header in ("train loss", "loss tokens (M)")
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
