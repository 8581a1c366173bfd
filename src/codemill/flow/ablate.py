"""`codemill ablate RECIPE.yaml`: the paper's claims at small scale, at equal token budgets.

Four runs share one corpus, tokenizer and held-out benchmarks and differ only in the data stream:
NTP only; NTP + FIM; the paper's NTP + FIM + SFIM mix; and that mix with every repository in random
file order instead of Algorithm 1. Same steps, batch and sequence length, so the same number of
training tokens. Each is evaluated on the recipe's suites; the table puts them side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

from codemill.eval.runner import compare
from codemill.flow.run import run
from codemill.train.metrics import loss_token_mix, mix_text

VARIANTS: dict[str, dict] = {
    "ntp": {"code_objectives": {"ntp": 1.0}},
    "ntp-fim": {"code_objectives": {"ntp": 0.5, "fim": 0.5}},
    "paper": {},  # data/config.py's defaults: SFIM 0.7, FIM 0.15, NTP 0.15 per repository, literal SFIM, Algorithm 1
    "paper-weighted-sfim": {"sfim_policy": "weighted"},  # our SFIM node policy against the paper's rule
    "paper-random-order": {"ordering": {"random": 1.0}},
}


def ablate(recipe: str | Path, out: str | Path, console, variants: list[str] | None = None,
           seed: int | None = None, shared: str | Path | None = None) -> Path:  # fmt: skip
    """`seed` replaces the data and training seeds (a repeat measures the noise); `shared` reuses
    the corpus, tokenizer and benchmarks of an earlier ablation."""
    out = Path(out)
    names = variants or list(VARIANTS)
    if unknown := set(names) - set(VARIANTS):
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    seeds = {"seed": seed} if seed is not None else {}
    for name in names:
        console.rule(f"[bold magenta]ablation: {name}")
        run(recipe, out / name, console, shared=shared or out / "shared", data_overrides={**VARIANTS[name], **seeds},
            train_overrides=seeds)  # fmt: skip
    path = out / "ablation.md"
    path.write_text(table(out, names))
    fim = [
        out / n / "eval" / "fim-eval"
        for n in names
        if (out / n / "eval" / "fim-eval" / "results.json").exists()
    ]
    if fim:  # Figure 4 across the variants, in CodeBLEU: exact match is near 0 at small scale
        compare(fim, out / "fim_codebleu_by_task_type.png", "codebleu")
    console.print(f"ablation table: [bold]{path}[/bold]")
    return path


def _summary(run_dir: Path, suite_dir: str) -> dict:
    p = run_dir / "eval" / suite_dir / "results.json"
    return json.loads(p.read_text())["summary"] if p.exists() else {}


def table(out: Path, names: list[str]) -> str:
    """One row per variant: final training loss, then the held-out scores (all languages pooled)."""
    cols = [
        ("train loss", None, None),
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
    ]
    lines = ["| variant | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    types: dict[str, dict[str, list[tuple[float, int]]]] = {}
    for name in names:
        cells = []
        for _, suite, metric in cols:
            if suite is None:
                rows = [
                    json.loads(x) for x in (out / name / "train" / "metrics.jsonl").read_text().splitlines()
                ]
                if metric == "mix":  # what the variant trained on, at the token level
                    cells.append(mix_text(loss_token_mix(rows)))
                    continue
                tail = rows[-5:]  # the mean of the last five logged losses, less noisy than the last
                cells.append(f"{sum(r['loss'] for r in tail) / len(tail):.3f}")
                continue
            v = _summary(out / name, suite).get("all", {}).get(metric)
            cells.append(
                "-"
                if v is None
                else f"{v:.3f}"
                if "bits" in metric
                else f"{v:.2f}"
                if metric == "length_ratio"
                else f"{v:.1f}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
