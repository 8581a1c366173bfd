"""`codemill data stats`: one pass of the training stream counted, then what it realised."""

from __future__ import annotations

import json
from pathlib import Path

from codemill.errors import writable
from codemill.flow.settings import training_stream


def stream_stats(corpus: Path, tokenizer: Path, recipe: Path | None, overrides: list[str], windows: int,
                 json_out: Path | None, console) -> None:  # fmt: skip
    """Count `windows` windows (0: one pass over the corpus), print the rules and the tables, and
    how far a repository-drawn objective mix can stray at this count."""
    from codemill.data.stats import StreamStats
    from codemill.progress import Bar

    writable(json_out, directory=False)
    stats = StreamStats()
    stream = training_stream(corpus, tokenizer, recipe, overrides, stats, epochs=None if windows else 1)
    repos = len(stream.sources["code"]) - len(stream.excluded)  # one pass visits each once
    with Bar(console) as bar:
        task = bar.add_task("windows" if windows else "repositories", total=windows or repos)
        for _ in stream:
            bar.update(task, completed=stats.windows if windows else stats.repos)
            if stats.windows == windows:
                break
    cfg = stream.cfg
    console.print(
        f"rules: Algorithm 1 strategies {cfg.ordering}; objectives drawn per {cfg.objective_unit} "
        f"{cfg.code_objectives}; SFIM {cfg.sfim_policy} rule; FIM layouts {cfg.fim_layouts}"
    )
    for table in stats.tables():
        console.print(table)
    if cfg.objective_unit == "repo" and stats.repos:
        p = cfg.code_objectives.get("sfim", 0.0)
        sd = (p * (1 - p) / stats.repos) ** 0.5
        console.print(
            f"{stats.windows:,} windows reached {stats.repos:,} repositories: the objective is drawn once per "
            f"repository, so the SFIM-drawn share of repositories varies by about ±{sd:.0%} (one sd) from "
            f"the {p:.0%} drawn at this count, and the share of tokens more, as repositories differ in size"
        )
    if json_out:
        json_out.write_text(json.dumps(stats.summary(), indent=2) + "\n")
