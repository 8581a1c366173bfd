"""`codemill train verify`: every checkpoint of a run against what its meta.json records."""

from __future__ import annotations

from pathlib import Path

from codemill.errors import UserError


def verify_run(run: Path, console) -> bool:
    """Print a row per checkpoint of `run` (or of its state/); return whether every one verifies."""
    from rich.table import Table

    from codemill.train import checkpoint

    state = run / "state" if (run / "state").is_dir() else run
    found = sorted(p for p in state.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    if not found:
        raise UserError(
            f"{state} holds no checkpoints (step-N directories); is {run} a `codemill train` run?"
        )
    table = Table("checkpoint", "files", "size", "verdict")
    failed = 0
    for path in found:
        files = [f for f in path.iterdir() if f.is_file()]
        problems = checkpoint.verify(path)
        if path.name.endswith(".bad"):
            problems = problems or ["set aside by a resume"]
        failed += bool(problems)
        size = sum(f.stat().st_size for f in files)
        table.add_row(path.name, str(len(files)), f"{size / 1e6:,.1f} MB", "; ".join(problems) or "ok")
    console.print(table)
    if failed:
        console.print(f"{failed} of {len(found)} checkpoints fail; a resume takes the newest that verifies")
    return not failed
