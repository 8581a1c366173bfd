"""How a command ends: a UserError as its message and exit code 2, a full disk said once with the
command's output, Ctrl-C as exit 130 (with how to resume, where the command resumes)."""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from codemill.cli.shared import console
from codemill.errors import FULL, UserError, disk_full

RESUMABLE = {"curate", "train", "run", "ablate", "adapt"}


def reporting(command):
    """A UserError becomes its message and exit code 2; any other exception keeps its traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        except OSError as e:  # a full disk met outside the writers that name what they write
            if e.errno not in FULL:
                raise
            name = command.__name__.rstrip("_").replace("_", " ")
            what, where = (
                (Path(e.filename).name, e.filename) if e.filename else (f"the output of {name}", None)
            )
            where = where or kwargs.get("out") or Path.cwd()
            console.print(f"[red]error:[/red] {disk_full(what, where)}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            again = "; rerun the same command to resume: finished work is kept"
            console.print(f"interrupted{again if command.__name__.rstrip('_') in RESUMABLE else ''}")
            raise typer.Exit(130) from None

    return run


def report_user_errors(group: typer.Typer) -> None:
    """Every command and group callback of `group` and its subgroups wrapped by `reporting`."""
    for info in group.registered_commands:
        info.callback = reporting(info.callback)
    if group.registered_callback is not None and group.registered_callback.callback is not None:
        group.registered_callback.callback = reporting(group.registered_callback.callback)
    for sub in group.registered_groups:
        report_user_errors(sub.typer_instance)
