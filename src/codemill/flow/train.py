"""`codemill train`: the settings checked, the run trained (or, dry, its memory printed)."""

from __future__ import annotations

from pathlib import Path

from codemill.errors import UserError, writable
from codemill.flow.settings import train_settings


def train_command(corpus: Path | None, tokenizer: Path | None, out: Path | None, recipe: Path | None,
                  overrides: list[str], init_from: Path | None, dry_run: bool, resume_anyway: bool,
                  console) -> None:  # fmt: skip
    """Train from the recipe and `--set` overrides; the tokenizer defaults to the checkpoint's that
    training continues (`--init-from`, or `train.init_from`)."""
    from codemill.train.loop import train

    if dry_run:
        from codemill.train.plan_report import print_memory

        return print_memory(*train_settings(recipe, overrides), console)
    if corpus is None or out is None:
        raise UserError("--corpus and --out are needed (and --tokenizer unless --init-from has one)")
    dcfg, tcfg = train_settings(recipe, overrides)
    if init_from is not None:
        tcfg.init_from = str(init_from)
    tokenizer = tokenizer or (Path(tcfg.init_from) if tcfg.init_from else None)
    if tokenizer is None:
        raise UserError("--tokenizer is needed; train one with `codemill tokenizer train`")
    writable(out)
    final = train(corpus, tokenizer, out, dcfg, tcfg, console, resume_anyway)
    console.print(
        f"model written to [bold]{final}[/bold] (Hugging Face Llama layout); `codemill train plot {out}` draws the loss"
    )
