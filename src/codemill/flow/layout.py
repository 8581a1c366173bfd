"""Where a run directory keeps each stage's output: the one place its paths are spelled.

`codemill run` writes the corpus, tokenizer and held-out benchmarks under one root and the training
run and evaluations under another (the same root unless runs share the first three, as ablation's
variants do); each is a `RunLayout`. The benchmark builders write `heldout_repos.txt` (and, holding
out files, `heldout_files.txt`) into the directory they build: `HELDOUT_REPOS`, `HELDOUT_FILES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HELDOUT_REPOS = "heldout_repos.txt"
HELDOUT_FILES = "heldout_files.txt"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def manifest(self) -> Path:
        return self.corpus / "manifest.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_json(self) -> Path:
        return self.tokenizer / "tokenizer.json"

    @property
    def bench(self) -> Path:
        return self.root / "bench"

    @property
    def fim_bench(self) -> Path:
        return self.bench / "fim"

    @property
    def crossfile_bench(self) -> Path:
        return self.bench / "crossfile"

    @property
    def heldout_repos(self) -> Path:
        return self.fim_bench / HELDOUT_REPOS

    @property
    def heldout_files(self) -> Path:
        return self.fim_bench / HELDOUT_FILES

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def final(self) -> Path:
        return self.train / "final"

    @property
    def final_config(self) -> Path:
        """Its presence marks the train stage done."""
        return self.final / "config.json"

    @property
    def metrics(self) -> Path:
        return self.train / "metrics.jsonl"

    @property
    def evals(self) -> Path:
        return self.root / "eval"

    def eval_dir(self, suite: str) -> Path:
        """A suite's results (`/` in a suite's name, as in crosscodeeval/infile, becomes `-`)."""
        return self.evals / suite.replace("/", "-")

    def eval_results(self, suite: str) -> Path:
        return self.eval_dir(suite) / "results.json"

    @property
    def base_results(self) -> Path:
        """fim-loss of the base model an adaptation started from."""
        return self.eval_dir("fim-loss") / "base" / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def adapt_recipe(self) -> Path:
        return self.root / "adapt.yaml"

    @property
    def adapt_json(self) -> Path:
        return self.root / "adapt.json"

    @property
    def adapted_gguf(self) -> Path:
        return self.root / "adapted.gguf"
