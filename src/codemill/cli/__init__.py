"""The `codemill` command: one group per stage of docs/design.md's flow, no logic of its own.

Each module here declares one command or group's arguments and calls the module that does the work
(flow/, and the stage's own package); `reporting` turns what a user can fix into a message and exit 2.
"""

from __future__ import annotations

import os

import typer

from codemill.cli import bench, corpus, curate, data, eval, export, run, serve, tokenizer, train
from codemill.cli.reporting import report_user_errors

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Build code-completion models the aiXcoder way."
)


@app.callback()
def main(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show the logs of the tools underneath (datatrove) on the console too."
    ),
) -> None:
    if verbose:
        os.environ["CODEMILL_VERBOSE"] = "1"


app.command()(curate.curate)
app.command("eval")(eval.eval_)
app.command("run")(run.run_)
app.command("adapt")(run.adapt_)
app.command("ablate")(run.ablate_)
app.command("serve")(serve.serve_)
app.command("complete")(serve.complete_)
app.add_typer(corpus.corpus_app, name="corpus")
app.add_typer(tokenizer.tokenizer_app, name="tokenizer")
app.add_typer(bench.bench_app, name="bench")
app.add_typer(train.train_app, name="train")
app.add_typer(data.data_app, name="data")
app.add_typer(export.export_app, name="export")
report_user_errors(app)

__all__ = ["app"]
