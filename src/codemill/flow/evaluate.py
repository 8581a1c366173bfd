"""The eval stage: `codemill eval SUITE` and a run's `eval SUITE` stages. A suite that measures a
checkpoint itself (fim-loss) is asked to; any other generates and is judged (eval/runner.py). Both
callers take a suite's options through `Suite.taking`, so a suite is given only what it reads."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from codemill.errors import UserError, writable
from codemill.eval.suites import SUITES, named
from codemill.flow.layout import RunLayout


def compare_runs(runs: list[Path], out: Path | None, console) -> None:
    """`codemill eval compare`: eval outputs side by side in the paper's tables."""
    from codemill.eval.runner import compare

    writable(out, directory=False)
    table = compare(runs, out.with_suffix(".png") if out else None)
    console.print(table)
    if out:
        out.write_text(table)


def evaluate_command(suite: str, model: str | None, generations: Path | None, out: Path | None, console, *,
                     format: str | None, given: dict, **settings) -> None:  # fmt: skip
    """`codemill eval SUITE`: `given` the suite options of the command line (each suite takes the
    ones it names), `settings` those of eval/runner.py's `evaluate`."""
    from codemill.eval.loss import measured
    from codemill.eval.models import Generations, load_model
    from codemill.eval.runner import evaluate
    from codemill.eval.tables import summary_table

    if (spec := SUITES.get(suite)) is None:
        raise UserError(f"unknown suite {suite!r}; choose one of {', '.join([*SUITES, 'compare'])}")
    if (model is None and generations is None) or out is None:
        raise UserError("--model (or --generations) and --out are needed")
    writable(out)
    if generations is None and Path(model).is_dir():  # a checkpoint: whole before anything loads it
        from codemill.model.hf import check_checkpoint

        check_checkpoint(model)
    options = spec.taking(**given)
    if spec.measure is not None:
        if model is None:
            raise UserError(f"{suite} scores a checkpoint: --generations does not apply")
        results = spec.measure(model, out, format=format, limit=settings["limit"], console=console, **options)
        console.print(measured(results, out))
        return
    scored = (
        Generations(generations)
        if generations is not None
        else load_model(model, format, api_key=os.environ.get("CODEMILL_API_KEY"))
    )
    results = evaluate(suite, scored, out, console=console, **settings, **options)
    console.print(summary_table(suite, results))
    console.print(f"every sample in [bold]{out}/results.json[/bold], the report in {out}/report.md")


def stamp_settings(suite: str, rcfg) -> tuple:
    """The run settings a suite's results depend on (its stage stamp covers them)."""
    found = named(suite)
    if found is not None and found[0].measure is not None:
        return (rcfg.loss_limit, rcfg.loss_files, rcfg.loss_baselines)
    return (rcfg.eval_limit, rcfg.eval_max_tokens)


def run_suite(suite: str, rcfg, model: Callable, final: Path, shared: RunLayout, out: Path, console) -> None:
    """A run's `eval SUITE` stage: `suite` as `run.suites` names it, on the run's held-out
    benchmarks (`shared`); `model()` loads the trained checkpoint (once for all suites)."""
    from codemill.eval.loss import bought
    from codemill.eval.runner import evaluate

    if (found := named(suite)) is None:
        choices = sorted(SUITES, key=lambda s: SUITES[s].measure is None)  # fim-loss first
        raise UserError(f"run.suites: unknown suite {suite!r}; choose from {', '.join(choices)}")
    spec, setting = found
    crossfile = shared.crossfile_bench if shared.crossfile_bench.is_dir() else None
    options = spec.taking(data=str(shared.bench / spec.built) if spec.built else None, setting=setting,
                          corpus=shared.corpus, files=rcfg.loss_files, crossfile=crossfile)  # fmt: skip
    if spec.measure is not None:
        results = spec.measure(str(final), out, limit=rcfg.loss_limit, baselines=rcfg.loss_baselines or
                               rcfg.base is not None, base=rcfg.base, console=console, **options)  # fmt: skip
        console.print(bought(results))
        return
    results = evaluate(spec.name, model(), out, limit=rcfg.eval_limit, max_tokens=rcfg.eval_max_tokens,
                       unsafe=rcfg.unsafe, console=console, **options)  # fmt: skip
    row = results["summary"]["all"]
    console.print(f"{suite}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float)))
