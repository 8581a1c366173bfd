"""Results laid out like the paper's tables: one row per model (or run), one column per benchmark
or language, so a codemill run can be read beside aiXcoder-7B's published numbers.

Tables: II NL2Code Pass@1; III SantaCoder-FIM exact match; IV CrossCodeEval EM/ES per setting;
V FIM-Eval EM/BLEU-4/CodeBLEU per language; VI FIM-Eval generated:reference length in characters;
and, not in the paper, the executed FIM benchmarks the field reports (HumanEval-infilling, SAFIM)
with SAFIM per language as its paper gives it. A table appears when at least one run has its
suite; each title names the rule behind its numbers.
"""

from __future__ import annotations

from collections.abc import Callable

NL2CODE = {"humaneval": "HumanEval", "mbpp": "MBPP", "multipl-e-cpp": "C++", "multipl-e-java": "Java",
           "multipl-e-js": "JavaScript"}  # fmt: skip
SANTACODER = ("Python", "JavaScript", "Java")  # the paper's column orders
CCEVAL = ("Python", "Java", "TypeScript", "C#")
FIM_EVAL = ("Java", "C++", "JavaScript", "Python")  # the paper's column order
INFILLING = ("single-line", "multi-line", "random-span", "random-span-light")
SAFIM = ("block", "control", "api")
SAFIM_LANGS = ("C++", "Java", "Python", "C#")  # the SAFIM paper's column order


def _name(run: dict) -> str:
    setting = run["settings"].get("setting")
    return f"{run['model']} ({setting})" if run["suite"] == "crosscodeeval" and setting else run["model"]


def _markdown(title: str, head: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _mean_row(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    return _fmt(sum(present) / len(present)) if present and len(present) == len(values) else "-"


def _models(runs: list[dict], suites: set[str], name: Callable[[dict], str] = _name) -> dict[str, dict]:
    """{row name: {suite: run}} over the runs of the given suites, in first-seen order."""
    out: dict[str, dict] = {}
    for r in runs:
        if r["suite"] in suites:
            out.setdefault(name(r), {})[r["suite"]] = r
    return out


def nl2code(runs: list[dict]) -> str | None:
    models = _models(runs, set(NL2CODE), lambda r: r["model"])
    if not models:
        return None
    rows, notes = [], []
    for model, by_suite in models.items():
        vals = [by_suite[s]["summary"]["all"].get("pass@1") if s in by_suite else None for s in NL2CODE]
        rows.append([model, *map(_fmt, vals), _mean_row(vals)])
        if "mbpp" in by_suite:
            notes += _mbpp_setup_note(model, by_suite["mbpp"])
    head = ["Model", "HumanEval", "MBPP", "MultiPL-E C++", "MultiPL-E Java", "MultiPL-E JS", "Average"]
    table = _markdown("Table II. NL2Code, Pass@1 (%)", head, rows)
    return table + "".join(f"\n{n}\n" for n in notes)


def _mbpp_setup_note(model: str, run: dict) -> list[str]:
    """MBPP's pass@1 as bigcode counts it: it never runs `test_setup_code`, so the greedy samples that
    passed with it (tasks 367 and 927 need it) count as failed there."""
    samples = [s for s in run.get("samples", []) if s.get("sample", 0) == 0 and "verdict" in s]
    helped = sorted(s["task_id"] for s in samples if s.get("test_setup_code") and s["verdict"] == "passed")
    if not samples or not helped:
        return []
    passed = sum(s["verdict"] == "passed" for s in samples)
    bigcode = 100 * (passed - len(helped)) / len(samples)
    return [f"MBPP ({model}): {', '.join(helped)} passed running `test_setup_code`, which bigcode's harness "
            f"does not run; counting them failed, as there, pass@1 is {bigcode:.1f}."]  # fmt: skip


def santacoder(runs: list[dict]) -> str | None:
    first = "santacoder-fim-first-line"
    name = lambda r: r["model"] + (" (first line)" if r["suite"] == first else "")  # noqa: E731
    models = _models(runs, {"santacoder-fim", first}, name)
    if not models:
        return None
    rows = []
    for model, by_suite in models.items():
        summary = next(iter(by_suite.values()))["summary"]
        vals = [summary.get(k, {}).get("exact_match") for k in SANTACODER]
        rows.append([model, *map(_fmt, vals), _mean_row(vals)])
    return _markdown(
        "Table III. SantaCoder-FIM single-line, exact match (%): the whole completion cut at the stop "
        "words (bigcode); rows marked (first line): its first non-empty line (Qwen)",
        ["Model", *SANTACODER, "Average"],
        rows,
    )


def cceval(runs: list[dict]) -> str | None:
    models = _models(runs, {"crosscodeeval"})
    if not models:
        return None
    rows = []
    for model, by_suite in models.items():
        summary = by_suite["crosscodeeval"]["summary"]
        cells = []
        for lang in CCEVAL:
            s = summary.get(lang, {})
            cells += [_fmt(s.get("exact_match")), _fmt(s.get("edit_similarity"))]
        rows.append([model, *cells])
    head = ["Model (setting)"] + [f"{v} {m}" for v in CCEVAL for m in ("EM", "ES")]
    title = "Table IV. CrossCodeEval, exact match and edit similarity (%), as cceval's eval_metric.py"
    return _markdown(title, head, rows)


def fim_eval(runs: list[dict]) -> str | None:
    models = _models(runs, {"fim-eval"})
    if not models:
        return None
    scores, lengths = [], []
    for model, by_suite in models.items():
        summary = by_suite["fim-eval"]["summary"]
        cells, lens = [], []
        for lang in FIM_EVAL:
            s = summary.get(lang, {})
            cells += [_fmt(s.get(k)) for k in ("exact_match", "bleu4", "codebleu")]
            lens.append(f"{s['pred_chars']:.0f}:{s['ref_chars']:.0f}" if "pred_chars" in s else "-")
        scores.append([model, *cells])
        lengths.append([model, *lens])
    head = ["Model"] + [f"{lang} {m}" for lang in FIM_EVAL for m in ("EM", "BLEU-4", "CodeBLEU")]
    return (
        _markdown(
            "Table V. FIM-Eval, EM / BLEU-4 / CodeBLEU (%), as aiXcoder's run_evaluate.py", head, scores
        )
        + "\n"
        + _markdown(
            "Table VI. FIM-Eval, mean generated : reference length (characters)",
            ["Model", *FIM_EVAL],
            lengths,
        )
    )


def _fim_name(run: dict) -> str:
    return run["model"] + (" (SPM)" if run["settings"].get("fim_mode") == "spm" else "")


def executed_fim(runs: list[dict]) -> str | None:
    """HumanEval-infilling and SAFIM pass@1 per suite, SAFIM's average of its three splits (its
    papers' headline), then SAFIM per language with the tasks a missing toolchain left unjudged."""
    suites = [f"humaneval-infilling/{k}" for k in INFILLING] + [f"safim/{k}" for k in SAFIM]
    models = _models(runs, set(suites), _fim_name)
    if not models:
        return None
    rows, langs = [], []
    for model, by_suite in models.items():
        vals = [by_suite[s]["summary"]["all"].get("pass@1") if s in by_suite else None for s in suites]
        rows.append([model, *map(_fmt, vals), _mean_row(vals[len(INFILLING) :])])
        for kind in SAFIM:
            run = by_suite.get(f"safim/{kind}")
            if run is None:
                continue
            cells = [_fmt(run["summary"].get(lang, {}).get("pass@1")) for lang in (*SAFIM_LANGS, "all")]
            skipped = sum("skipped" in s for s in run.get("samples", []))
            langs.append([model, kind, *cells, str(skipped)])
    head = ["Model", *(f"HumanEval-infilling {k}" for k in INFILLING), *(f"SAFIM {k}" for k in SAFIM)]
    out = _markdown(
        "FIM, executed (not in the paper), pass@1 (%): HumanEval-infilling as openai/human-eval-infilling "
        "runs it; SAFIM as gonglinyuan/safim's evaluate.py (block, control: unit tests; api: syntax match)",
        [*head, "SAFIM average"],
        rows,
    )
    if langs:
        out += "\n" + _markdown(
            "SAFIM per language, pass@1 (%) (all: over every judged task; skipped: tasks in a language "
            "whose toolchain is not installed, left out of the rates)",
            ["Model", "Split", *SAFIM_LANGS, "All", "Skipped"],
            langs,
        )
    return out


def paper_tables(runs: list[dict]) -> str:
    """Every table some run can fill, in the paper's order, then the executed FIM benchmarks."""
    tables = (nl2code(runs), santacoder(runs), cceval(runs), fim_eval(runs), executed_fim(runs))
    parts = [t for t in tables if t]
    return "\n".join(parts)


def summary_table(suite: str, results: dict):
    """`codemill eval`'s console table: a suite's summary, one row per language."""
    from rich.table import Table

    table = Table(title=f"{suite}: {results['model']}")
    cols = sorted({k for r in results["summary"].values() for k in r} - {"tasks"})
    for c in ("language", "tasks", *cols):
        table.add_column(c, justify="left" if c == "language" else "right")
    for lang, r in results["summary"].items():
        table.add_row(
            lang,
            str(r["tasks"]),
            *(f"{r[c]:.1f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols),
        )
    return table
