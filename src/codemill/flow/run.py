"""`codemill run RECIPE.yaml`: curate -> tokenizer -> held-out benchmarks -> train -> eval -> report.

Every stage writes into one run directory and records a stamp (a hash of its settings and of the
stamps it depends on) in `stages.json` when it finishes. A rerun skips a stage whose stamp is
unchanged and whose output exists, and redoes it and everything after it otherwise; curate and train
resume an interrupted run themselves (their own checkpoints), eval redoes only unfinished suites.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from codemill.config import Settings, at_least, fraction, load_recipe, positive
from codemill.data.tokenizer import DEFAULT_PRETOKENIZER
from codemill.errors import writable
from codemill.flow.layout import RunLayout


@dataclass
class RunConfig(Settings):
    section = "run"

    sources: tuple[str, ...] = ("installed",)  # what `codemill curate` takes
    # a checkpoint to adapt (`codemill adapt`): its tokenizer and FIM format are used, never retrained,
    # training starts from its weights, and fim-loss scores it beside the adapted model
    base: str | None = None
    # what is held out for the built benchmarks: whole repositories, a keyed share of every
    # repository's files, or (auto) repositories when at least `min_heldout_repos` would be
    holdout_unit: str = "auto"
    min_heldout_repos: int = positive(5)
    vocab_size: int = positive(8192)
    tokenizer_bytes: int = positive(100_000_000)
    pretokenizer: str = DEFAULT_PRETOKENIZER  # llama.cpp's name; `codemill` is ours (data/tokenizer.py)
    holdout: float = fraction(0.1)  # share of repositories held out of training for the built benchmarks
    fim_per_type: int = positive(10)  # FIM-Eval-shaped tasks per language and task type
    crossfile_per_repo: int = positive(5)
    # suites to run: humaneval, mbpp, multipl-e-*, santacoder-fim; fim-eval, crosscodeeval[/setting] and
    # fim-loss (bits per byte, beside the untrained model and a unigram) run on the held-out repositories
    suites: tuple[str, ...] = (
        "humaneval", "fim-eval", "crosscodeeval/infile", "crosscodeeval/retrieval", "fim-loss",
    )  # fmt: skip
    eval_limit: int | None = positive(None)  # tasks per generation suite (evenly spaced)
    # FIM and cross-file tasks fim-loss scores (evenly spaced); None: all
    loss_limit: int | None = positive(None)
    loss_files: int = at_least(0, 100)  # held-out files fim-loss scores left to right
    loss_baselines: bool = True  # fim-loss also scores the untrained initialisation and a unigram model
    eval_max_tokens: int | None = positive(128)
    unsafe: bool = False  # run generated code without bubblewrap


def _stamp(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Stages:
    """stages.json: the stamp of every finished stage, and of every stage started (`NAME/started`)."""

    path: Path
    done: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> Stages:
        return cls(path, json.loads(path.read_text()) if path.exists() else {})

    def fresh(self, name: str, stamp: str, output: Path) -> bool:
        return self.done.get(name) == stamp and output.exists()

    def start(self, name: str, stamp: str) -> str | None:
        """Record that `name` starts with `stamp`; return the stamp its output was made with, if other."""
        before = self.done.get(f"{name}/started", self.done.get(name))
        self.done[f"{name}/started"] = stamp
        self._write()
        return before if before not in (None, stamp) else None

    def finish(self, name: str, stamp: str) -> None:
        self.done[name] = stamp
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=1) + "\n")
        tmp.replace(self.path)


def run(recipe_path: str | Path, out: str | Path, console, *, shared: str | Path | None = None,
        data_overrides: dict | None = None, train_overrides: dict | None = None,
        suites: tuple[str, ...] | None = None) -> dict:  # fmt: skip
    """Run the flow; return {stage: seconds} (0 for stages that were up to date). With `shared`,
    the corpus, tokenizer and benchmarks live there (runs that differ only in training share them).
    `suites` replaces the recipe's."""
    from codemill.curate.config import CurateConfig
    from codemill.data.config import DataConfig
    from codemill.flow.adapt import base_format, export, write_adapt_json
    from codemill.flow.bench import build_heldout
    from codemill.flow.curate import curate_corpus
    from codemill.flow.evaluate import run_suite, stamp_settings
    from codemill.flow.tokenizer import train_tokenizer
    from codemill.formats import DEFAULT_FORMAT, get_format
    from codemill.train.config import TrainConfig

    recipe = load_recipe(recipe_path)
    rcfg = RunConfig.from_dict(recipe.get("run"))
    ccfg = CurateConfig.from_dict(recipe.get("curate"))
    here = RunLayout(out)
    base = RunLayout(shared) if shared else here
    for d in (here.root, base.root):
        d.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def stage(
        name: str, stamp: str, output: Path, work, where: RunLayout = here, restart: Path | None = None
    ) -> None:
        """`restart`: a directory removed when the stage's settings changed since it was written, where
        the stage would otherwise resume or keep the old run (train, bench); curate refuses such a
        resume itself, the tokenizer and evals are written whole."""
        stages = Stages.open(where.stages)
        if stages.fresh(name, stamp, output):
            console.print(f"[dim]{name}: up to date ({output})[/dim]")
            seconds[name] = 0.0
            return
        console.rule(f"[bold]{name}")
        if stages.start(name, stamp) and restart is not None and restart.exists():
            console.print(f"{name}: the settings changed since {restart} was written; starting it again")
            shutil.rmtree(restart)
        t0 = time.perf_counter()
        work()
        seconds[name] = time.perf_counter() - t0
        stages.finish(name, stamp)

    tokenizer = base.tokenizer
    adapting = base_format(rcfg, recipe)  # before any work: a bad base is said first
    s_corpus = _stamp(rcfg.sources, ccfg.to_dict())
    stage("curate", s_corpus, base.manifest, lambda: curate_corpus(list(rcfg.sources), base.corpus, ccfg, console),
          base)  # fmt: skip
    data_format = (recipe.get("data") or {}).get("format")
    if adapting:
        tokenizer = Path(rcfg.base)  # the base's own, never retrained
        s_tok = _stamp(s_corpus, str(tokenizer.resolve()), adapting)
    else:
        s_tok = _stamp(s_corpus, rcfg.vocab_size, rcfg.tokenizer_bytes, rcfg.pretokenizer, data_format)
        stage("tokenizer", s_tok, base.tokenizer_json,
              lambda: train_tokenizer(base.corpus, base.tokenizer, vocab_size=rcfg.vocab_size,
                                      max_bytes=rcfg.tokenizer_bytes, fmt=get_format(data_format or DEFAULT_FORMAT),
                                      pretokenizer=rcfg.pretokenizer), base)  # fmt: skip
    s_bench = _stamp(s_corpus, rcfg.holdout, rcfg.fim_per_type, rcfg.crossfile_per_repo, rcfg.holdout_unit)
    stage(
        "bench",
        s_bench,
        base.heldout_repos,
        lambda: build_heldout(rcfg, base, console),
        base,
        restart=base.bench,
    )

    data = {**(recipe.get("data") or {}), **(data_overrides or {})}
    data["exclude_repos"] = str(base.heldout_repos)
    if base.heldout_files.exists():
        data["exclude_files"] = str(base.heldout_files)
    train = {**(recipe.get("train") or {}), **(train_overrides or {})}
    if adapting:
        data.setdefault("format", adapting)
        train.setdefault("init_from", rcfg.base)
    dcfg = DataConfig.from_dict(data)
    tcfg = TrainConfig.from_dict(train)
    s_train = _stamp(s_tok, s_bench, dcfg.to_dict(), tcfg.to_dict())
    stage("train", s_train, here.final_config,
          lambda: _train(base.corpus, tokenizer, here.train, dcfg, tcfg, console), restart=here.train)  # fmt: skip

    loaded: dict = {}

    def model():  # loaded once, by the first suite that is not up to date
        if "m" not in loaded:
            from codemill.eval.models import Checkpoint

            loaded["m"] = Checkpoint(here.final)
            loaded["m"].name = here.root.name  # the run's name, not "final"
        return loaded["m"]

    for suite in rcfg.suites if suites is None else suites:
        target = here.eval_dir(suite)
        stage(f"eval {suite}", _stamp(s_train, suite, *stamp_settings(suite, rcfg)), here.eval_results(suite),
              lambda s=suite, t=target: run_suite(s, rcfg, model, here.final, base, t, console))  # fmt: skip
    if adapting:
        stage("export", s_train, here.adapted_gguf, lambda: export(here.final, here.adapted_gguf, console))
        write_adapt_json(here, base, rcfg, adapting)
    report = write_report(here, base)
    console.print(f"report: [bold]{report}[/bold]")
    console.print(f"serve the model: [bold]codemill serve {here.final} --port 8012[/bold]")
    return seconds


def prepare(recipe: Path, out: Path | None) -> Path:
    """`codemill run`'s directory (default runs/RECIPE-STEM), checked with the recipe before any work:
    a bad recipe or an unwritable place is named before any output is made."""
    out = out or Path("runs") / recipe.stem
    load_recipe(recipe)
    writable(out)
    return out


def stages_table(title: str, seconds: dict[str, float]):
    """The stages `run` went through, with their seconds or `up to date`."""
    from rich.table import Table

    table = Table(title=f"{title}: stages")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, s in seconds.items():
        table.add_row(name, f"{s:.0f}" if s else "up to date")
    return table


def _train(corpus: Path, tokenizer: Path, out: Path, dcfg, tcfg, console) -> None:
    from codemill.train.loop import train
    from codemill.train.metrics import plot

    train(corpus, tokenizer, out, dcfg, tcfg, console)
    plot(out)


def write_report(here: RunLayout, base: RunLayout) -> Path:
    """report.md: corpus, held-out benchmarks, training curve, evaluation in the paper's tables."""
    from codemill.eval.tables import paper_tables

    lines = [f"# codemill run: {here.root.name}", ""]
    manifest = base.manifest
    if manifest.exists():
        m = json.loads(manifest.read_text())
        r, f = m["repositories"], m["files"]
        lines += ["## Corpus", "", f"Sources {', '.join(m['sources'])}: {r['in']:,} repositories in, "
                  f"{r['with_kept_files']:,} with kept files; {f['out']:,} files, {f['bytes_out'] / 1e6:.1f} MB kept; "
                  f"curated in {m['seconds']:.0f} s. Per stage: `codemill corpus stats {base.corpus}`.", ""]  # fmt: skip
    held = base.heldout_repos
    if held.exists():
        n = len(held.read_text().split())
        lines += [f"{n} repositories held out of training for the built FIM and cross-file benchmarks.", ""]
    metrics = here.metrics
    if metrics.exists():
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        if rows:
            lines += [
                "## Training",
                "",
                _training_text(rows, here.train),
                "",
                "![loss](train/loss.png)",
                "",
            ]
    runs = [json.loads(p.read_text()) for p in sorted(here.evals.glob("*/results.json"))]
    for r in runs:
        if r["suite"] == "fim-loss" and "baselines" in r:
            from codemill.eval.loss import bought_table

            title = "What adaptation bought" if "base" in r["baselines"] else "What training bought"
            beside = (
                "the base model it was adapted from, on the same tasks"
                if "base" in r["baselines"]
                else "the same model before training and a unigram model of the training corpus for scale"
            )
            lines += [f"## {title}", "", "Bits per byte (lower is better, 95% intervals) on the held-out "
                      f"code: FIM middles given prefix and suffix, and the files left to right; {beside} "
                      f"(`{here.eval_dir('fim-loss') / 'report.md'}` per language and task type).", "",
                      bought_table(r) + _compressor_rows(r, base), ""]  # fmt: skip
    runs = [r for r in runs if r["suite"] != "fim-loss"]
    if runs:
        lines += ["## Evaluation", "", paper_tables(runs), ""]
    lines += ["## Serve", "", "```", f"codemill serve {here.final} --port 8012", "```", ""]
    path = here.report
    path.write_text("\n".join(lines))
    return path


def _compressor_rows(r: dict, base: RunLayout) -> str:
    """gzip / xz rows under What training bought, on the same held-out files: the scale a model's
    bits per byte should be read against (a model above them has learned less than a compressor)."""
    from codemill.eval.loss import heldout_texts
    from codemill.flow.stats import compressed_bits_per_byte

    held, n = base.heldout_repos, r["summary"].get("left-to-right", {}).get("files")
    if "base" in r["baselines"] or not n or not held.exists():
        return ""
    got = compressed_bits_per_byte(heldout_texts(base.corpus, held, n))
    return "".join(f"\n| {name}, each file alone | - | - | {v:.3f} |" for name, v in got.items())


def _training_text(rows: list[dict], train: Path) -> str:
    """The run's size, its loss at the end, and the objective mix it realised against the one drawn."""
    from codemill.train import checkpoint
    from codemill.train.metrics import loss_token_mix, mix_text

    run = json.loads((train / "run.json").read_text())
    # one logged step is one batch of files: a mean says more than the last point (records of steps that
    # were all skipped, non-finite or spiking, have no loss)
    end = [r for r in rows if r["loss"] is not None][-5:] or rows[-1:]
    loss = sum(r["loss"] for r in end) / len(end) if end[0]["loss"] is not None else float("nan")
    drawn = mix_text(run["data"]["code_objectives"])
    text = (f"{rows[-1]['step']} steps, {rows[-1]['tokens']:,} tokens; loss {loss:.3f} at the end (mean of steps "
            f"{end[0]['step']}-{end[-1]['step']}; a step's loss depends on the files its windows hold, so the "
            f"held-out measures below are what compares runs). Loss tokens by objective: "
            f"{mix_text(loss_token_mix(rows))}, drawn {drawn}")  # fmt: skip
    if (last := checkpoint.latest(train / "state")) is not None:
        states = [json.loads(p.read_text()) for p in last.glob("data-shard-*.json")]
        reached = sum(st["pos"]["code"] for st in states)
        text += (f": the objective is drawn once per repository (paper §III-C) and weighted by the tokens a run "
                 f"takes from it, so a run that reaches few repositories can realise another mix; this one "
                 f"reached {reached} repositories over {len(states)} data shard(s) in its last epoch")  # fmt: skip
    return text + "."
