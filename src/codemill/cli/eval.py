"""`codemill eval SUITE` and `codemill eval compare` (flow/evaluate.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from codemill.cli.shared import console


def eval_(
    suite: str = typer.Argument(
        ...,
        help="humaneval, mbpp, santacoder-fim, fim-eval, crosscodeeval, multipl-e-cpp|java|js, "
        "humaneval-infilling/single-line|multi-line|random-span|random-span-light, "
        "safim/block|control|api, fim-loss "
        "(bits per byte of FIM middles and held-out files); or compare.",
    ),
    runs: list[Path] = typer.Argument(
        None, help="With `compare`: eval output directories to put side by side."
    ),
    model: str = typer.Option(
        None,
        help="A checkpoint directory, an OpenAI-compatible URL (http://host:port/v1[#model]; key from "
        "$CODEMILL_API_KEY), `reference` (self-test: 100%) or `empty`.",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="results.json and report.md go here (compare: a .md file, and a .png per task type).",
    ),
    format: str = typer.Option(
        None, help="Prompt format of the checkpoint (default: its codemill.json, else codemill)."
    ),
    data: str = typer.Option(
        None, help="The benchmark file (MBPP jsonl, SantaCoder-FIM parquet, SAFIM jsonl)."
    ),
    split: str = typer.Option("all", help="MBPP: all (974, the paper) or test (500, bigcode)."),
    setting: str = typer.Option("retrieval", help="CrossCodeEval: infile, retrieval (BM25 rg1) or oracle."),
    fim_mode: str = typer.Option(
        "psm", help="HumanEval-infilling, SAFIM: the FIM layout, psm or spm (where the format has it)."
    ),
    generations: Path = typer.Option(
        None,
        help="Judge these completions instead of a model's: JSON Lines of {task_id, completion}, "
        "several lines per task for pass@k; tasks not in the file are not judged.",
    ),
    limit: int = typer.Option(None, help="N tasks evenly spaced through the suite, not the first N."),
    samples: int = typer.Option(
        1, help="Samples per task (pass@k for every k up to it); needs --temperature."
    ),
    temperature: float = typer.Option(0.0, help="0: greedy."),
    max_tokens: int = typer.Option(None, help="New tokens per task (default: the suite's, 512 for NL2Code)."),
    syntax_stop: bool = typer.Option(
        False,
        "--syntax-stop",
        help="FIM: stop where the completion closes a syntactic unit (serve's own syntax stop, applied as tokens are generated).",
    ),
    workers: int = typer.Option(None, help="Parallel sandboxed executions (default: CPU count)."),
    unsafe: bool = typer.Option(
        False, "--unsafe", help="Run generated code without bubblewrap (limits only)."
    ),
    corpus: Path = typer.Option(
        None,
        help="fim-loss: score files of the held-out repositories (--data's heldout_repos.txt) of this corpus.",
    ),
    files: int = typer.Option(200, help="fim-loss: held-out files scored left to right."),
    crossfile: Path = typer.Option(
        None,
        help="fim-loss: a CrossCodeEval-shaped directory; its target lines are scored in-file and with retrieval.",
    ),
) -> None:
    """Evaluate a model like the paper: generate, execute in a sandbox, report.
    `codemill eval compare RUN...` puts runs side by side in the paper's tables."""
    from codemill.flow.evaluate import compare_runs, evaluate_command

    if suite == "compare":
        return compare_runs(runs or [], out, console)
    evaluate_command(suite, model, generations, out, console, format=format,
                     given={"data": data, "split": split, "setting": setting, "fim_mode": fim_mode,
                            "corpus": corpus, "files": files, "crossfile": crossfile},
                     limit=limit, workers=workers, unsafe=unsafe, samples=samples, temperature=temperature,
                     max_tokens=max_tokens, syntax_stop=syntax_stop)  # fmt: skip
