"""The one progress bar of long steps: a total, the time spent and an ETA. Where output is not a
terminal (a log, CI, `| tee`), rich draws nothing live, so each task says when it starts and its
final line stays: a line per stage instead of minutes of silence."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Bar(Progress):
    def __init__(self, console: Console | None = None, transient: bool = True, disable: bool = False):
        console = console or Console()
        super().__init__(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=transient and console.is_terminal,
            disable=disable,
        )

    def add_task(self, description: str, *args, **kwargs):
        if not self.console.is_terminal and not self.disable:
            total = kwargs.get("total")
            self.console.print(f"{description}: started" + (f" ({total:,})" if total else ""))
        return super().add_task(description, *args, **kwargs)
