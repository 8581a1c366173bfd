"""Recipe sections with `--set key=value` overrides: how every command reads its settings."""

from __future__ import annotations

from pathlib import Path

from codemill.config import load_recipe, parse_overrides


def section(cls, recipe: Path | None, given: dict):
    """A recipe section (`cls.section`) with the parsed `--set` values `given` applied."""
    return cls.from_dict({**(load_recipe(recipe)[cls.section] if recipe else {}), **given})


def overridden(cls, recipe: Path | None, overrides: list[str]):
    """A recipe section (`cls.section`) with `--set key=value` overrides applied."""
    return section(cls, recipe, parse_overrides(overrides))


def train_settings(recipe: Path | None, overrides: list[str]):
    """The recipe's data and train sections, `--set data.x=...` and `--set x=...` applied."""
    from codemill.data.config import DataConfig
    from codemill.train.config import TrainConfig

    given = parse_overrides(overrides)
    data_set = {k.removeprefix("data."): v for k, v in given.items() if k.startswith("data.")}
    train_set = {k.removeprefix("train."): v for k, v in given.items() if not k.startswith("data.")}
    return section(DataConfig, recipe, data_set), section(TrainConfig, recipe, train_set)


def training_stream(corpus: Path, tokenizer: Path, recipe: Path | None, overrides: list[str], stats=None,
                    epochs=None):  # fmt: skip
    """The training stream `codemill data` inspects: the recipe's data section, `--set` applied."""
    from codemill.data.config import DataConfig
    from codemill.data.stream import TrainingStream
    from codemill.data.tokenizer import load_tokenizer

    cfg = overridden(DataConfig, recipe, overrides)
    return TrainingStream(corpus, load_tokenizer(tokenizer), cfg, stats=stats, epochs=epochs)
