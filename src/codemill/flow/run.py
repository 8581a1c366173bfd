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
from codemill.curate.corpus import shards
from codemill.data.tokenizer import DEFAULT_PRETOKENIZER
from codemill.errors import UserError


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
    def open(cls, out: Path) -> Stages:
        p = out / "stages.json"
        return cls(p, json.loads(p.read_text()) if p.exists() else {})

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
    from codemill.train.config import TrainConfig

    recipe = load_recipe(recipe_path)
    rcfg = RunConfig.from_dict(recipe.get("run"))
    ccfg = CurateConfig.from_dict(recipe.get("curate"))
    out = Path(out)
    base = Path(shared) if shared else out
    for d in (out, base):
        d.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def stage(
        name: str, stamp: str, output: Path, work, where: Path = out, restart: Path | None = None
    ) -> None:
        """`restart`: a directory removed when the stage's settings changed since it was written, where
        the stage would otherwise resume or keep the old run (train, bench); curate refuses such a
        resume itself, the tokenizer and evals are written whole."""
        stages = Stages.open(where)
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

    corpus, tokenizer, bench = base / "corpus", base / "tokenizer", base / "bench"
    adapting = _base_settings(rcfg, recipe)  # before any work: a bad base is said first
    s_corpus = _stamp(rcfg.sources, ccfg.to_dict())
    stage("curate", s_corpus, corpus / "manifest.json", lambda: _curate(rcfg, ccfg, corpus, console), base)
    if adapting:
        tokenizer = Path(rcfg.base)  # the base's own, never retrained
        s_tok = _stamp(s_corpus, str(tokenizer.resolve()), adapting)
    else:
        s_tok = _stamp(
            s_corpus,
            rcfg.vocab_size,
            rcfg.tokenizer_bytes,
            rcfg.pretokenizer,
            (recipe.get("data") or {}).get("format"),
        )
        stage(
            "tokenizer",
            s_tok,
            tokenizer / "tokenizer.json",
            lambda: _tokenizer(rcfg, recipe, corpus, tokenizer),
            base,
        )
    s_bench = _stamp(s_corpus, rcfg.holdout, rcfg.fim_per_type, rcfg.crossfile_per_repo, rcfg.holdout_unit)
    stage(
        "bench",
        s_bench,
        bench / "fim" / "heldout_repos.txt",
        lambda: _bench(rcfg, corpus, bench, console),
        base,
        restart=bench,
    )

    data = {**(recipe.get("data") or {}), **(data_overrides or {})}
    data["exclude_repos"] = str(bench / "fim" / "heldout_repos.txt")
    if (bench / "fim" / "heldout_files.txt").exists():
        data["exclude_files"] = str(bench / "fim" / "heldout_files.txt")
    train = {**(recipe.get("train") or {}), **(train_overrides or {})}
    if adapting:
        data.setdefault("format", adapting)
        train.setdefault("init_from", rcfg.base)
    dcfg = DataConfig.from_dict(data)
    tcfg = TrainConfig.from_dict(train)
    train_dir = out / "train"
    s_train = _stamp(s_tok, s_bench, dcfg.to_dict(), tcfg.to_dict())
    stage(
        "train",
        s_train,
        train_dir / "final" / "config.json",
        lambda: _train(corpus, tokenizer, train_dir, dcfg, tcfg, console),
        restart=train_dir,
    )

    final = train_dir / "final"
    loaded: dict = {}

    def model():  # loaded once, by the first suite that is not up to date
        if "m" not in loaded:
            from codemill.eval.models import Checkpoint

            loaded["m"] = Checkpoint(final)
            loaded["m"].name = out.name  # the run's name, not "final"
        return loaded["m"]

    for suite in rcfg.suites if suites is None else suites:
        name = f"eval {suite}"
        target = out / "eval" / suite.replace("/", "-")
        s_eval = (
            _stamp(s_train, suite, rcfg.loss_limit, rcfg.loss_files, rcfg.loss_baselines)
            if suite == "fim-loss"
            else _stamp(s_train, suite, rcfg.eval_limit, rcfg.eval_max_tokens)
        )
        stage(
            name,
            s_eval,
            target / "results.json",
            (lambda t=target: _fim_loss(rcfg, final, corpus, bench, t, console))
            if suite == "fim-loss"
            else (lambda s=suite, t=target: _eval(rcfg, s, model(), bench, t, console)),
        )
    if adapting:
        gguf = out / "adapted.gguf"
        stage("export", s_train, gguf, lambda: _export(final, gguf, console))
        _adapt_json(out, rcfg, adapting, bench)
    report = write_report(out, base)
    console.print(f"report: [bold]{report}[/bold]")
    console.print(f"serve the model: [bold]codemill serve {final} --port 8012[/bold]")
    return seconds


def _base_settings(rcfg: RunConfig, recipe: dict) -> str | None:
    """With `run.base`: the checkpoint whole, and the FIM format it was trained in (the recipe's
    `data.format`, else its codemill.json's, else the family its tokenizer's special tokens name)."""
    if rcfg.base is None:
        return None
    from codemill.data.tokenizer import load_tokenizer
    from codemill.formats import codemill_info, detect_format, get_format, has_token
    from codemill.model.hf import check_checkpoint, hf_config

    base = Path(rcfg.base)
    if not (base / "config.json").exists():
        raise UserError(f"run.base {base} is not a checkpoint directory (no config.json)")
    check_checkpoint(base)
    tok = load_tokenizer(base)
    if tok.vocab_size > (rows := hf_config(base).vocab_size):
        raise UserError(
            f"{base}'s tokenizer has {tok.vocab_size:,} ids but its embeddings {rows:,} rows: the tokenizer "
            "is not the model's; put the base's own tokenizer files in its folder"
        )
    if name := (recipe.get("data") or {}).get("format") or codemill_info(base).get("format"):
        fmt = get_format(name)
        if missing := [t for t in fmt.specials if not has_token(tok, t)]:
            raise UserError(
                f"{base}'s tokenizer lacks {', '.join(missing)} of format {name}; pass another --format"
            )
        return name
    return detect_format(tok).name


def _curate(rcfg: RunConfig, ccfg, corpus: Path, console) -> None:
    from codemill.curate.pipeline import curate, require_files
    from codemill.curate.report import summary

    manifest = curate(list(rcfg.sources), corpus, ccfg)
    console.print(summary(manifest))
    require_files(manifest, corpus)


def _tokenizer(rcfg: RunConfig, recipe: dict, corpus: Path, out: Path) -> None:
    from codemill.data.tokenizer import save_tokenizer, train_bpe, training_texts
    from codemill.formats import get_format

    fmt = get_format((recipe.get("data") or {}).get("format", "codemill"))
    texts, n = training_texts(corpus, rcfg.tokenizer_bytes)
    tok = train_bpe(texts, rcfg.vocab_size, fmt, show_progress=True, pretokenizer=rcfg.pretokenizer, length=n)
    save_tokenizer(tok, out, fmt)


def _bench(rcfg: RunConfig, corpus: Path, bench: Path, console) -> None:
    from rich.table import Table

    from codemill.eval.builders import build_crossfile, build_fim

    unit = _holdout_unit(rcfg, corpus)
    try:
        cross = build_crossfile(
            corpus, bench / "crossfile", holdout=rcfg.holdout, per_repo=rcfg.crossfile_per_repo, unit=unit
        )
    except UserError as e:  # a small corpus may have no cross-file language: FIM tasks still measure
        console.print(f"[yellow]no cross-file benchmark:[/yellow] {e}")
        cross = {"repos": 0, "tasks": {}}
    fim = build_fim(corpus, bench / "fim", holdout=rcfg.holdout, per_type=rcfg.fim_per_type, unit=unit)
    table = Table(
        title=f"held-out benchmarks ({fim['repos']} repositories for FIM, {cross['repos']} cross-file)"
    )
    for col in ("language", "task type", "tasks"):
        table.add_column(col, justify="right" if col == "tasks" else "left")
    for key, n in sorted(fim["tasks"].items()):
        table.add_row(*key.split("/", 1), str(n))
    for key, n in sorted(cross["tasks"].items()):
        table.add_row(key, "cross-file", str(n))
    console.print(table)


def _holdout_unit(rcfg: RunConfig, corpus: Path) -> str:
    """Whole repositories when enough would be held out, else a keyed share of every repository's
    files (a team with one repository still gets a benchmark, and trains on the rest)."""
    if rcfg.holdout_unit not in ("auto", "repo", "file"):
        raise UserError(f"run.holdout_unit is {rcfg.holdout_unit!r}; use auto, repo or file")
    if rcfg.holdout_unit != "auto":
        return rcfg.holdout_unit
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    repos = set()
    for f in shards(corpus):
        repos |= set(pc.unique(pq.read_table(f, columns=["repo"]).column("repo")).to_pylist())
    return "repo" if len(repos) * rcfg.holdout >= rcfg.min_heldout_repos else "file"


def _train(corpus: Path, tokenizer: Path, out: Path, dcfg, tcfg, console) -> None:
    from codemill.train.loop import train
    from codemill.train.metrics import plot

    train(corpus, tokenizer, out, dcfg, tcfg, console)
    plot(out)


def _eval(rcfg: RunConfig, suite: str, model, bench: Path, out: Path, console) -> None:
    from codemill.eval.runner import evaluate
    from codemill.eval.suites import SUITES

    name, _, setting = (suite, "", "") if suite in SUITES else suite.partition("/")  # humaneval-infilling/...
    if (spec := SUITES.get(name)) is None:
        raise UserError(f"run.suites: unknown suite {suite!r}; choose from fim-loss, {', '.join(SUITES)}")
    options = {"data": str(bench / spec.built)} if spec.built else {}
    if setting and "setting" in spec.options:
        options["setting"] = setting
    results = evaluate(name, model, out, limit=rcfg.eval_limit, max_tokens=rcfg.eval_max_tokens,
                       unsafe=rcfg.unsafe, console=console, **options)  # fmt: skip
    row = results["summary"]["all"]
    console.print(f"{suite}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float)))


def _fim_loss(rcfg: RunConfig, final: Path, corpus: Path, bench: Path, out: Path, console) -> None:
    from codemill.eval.loss import what_training_bought

    results = what_training_bought(final, corpus, bench, out, files=rcfg.loss_files, limit=rcfg.loss_limit,
                                   baselines=rcfg.loss_baselines or rcfg.base is not None, base=rcfg.base,
                                   console=console)  # fmt: skip
    s = results["summary"]
    line = f"fim-loss: FIM middles {s['all']['psm_bits_per_byte']:.3f} bits/byte (PSM)"
    if (base := results.get("baselines")) and "base" in base:
        line += f", base before adaptation {base['base']['all']['psm_bits_per_byte']:.3f}"
    elif base:
        line += (f", untrained {base['untrained']['all']['psm_bits_per_byte']:.3f}, unigram "
                 f"{base['unigram']['all']['psm_bits_per_byte']:.3f}")  # fmt: skip
    console.print(line)


def _export(final: Path, gguf: Path, console) -> None:
    """The adapted model for llama.cpp; an architecture the export does not write is said, not fatal
    (the Hugging Face checkpoint in train/final serves and evaluates all the same)."""
    from codemill.model.gguf import export_gguf

    try:
        info = export_gguf(final, gguf)
    except UserError as e:
        console.print(f"[yellow]no GGUF export:[/yellow] {e}")
        return
    n = info["context"]
    console.print(f"GGUF: {gguf}; `llama-server -m {gguf} -c {n} -b {n // 2} -n 64` (docs/editors.md)")


def _adapt_json(out: Path, rcfg: RunConfig, fmt: str, bench: Path) -> None:
    """adapt.json: held-out bits per byte of the base and the adapted model, the format, what was held out."""
    path = out / "eval" / "fim-loss" / "results.json"
    if not path.exists():
        return
    r = json.loads(path.read_text())

    def scores(summary: dict) -> dict:
        a, ltr = summary.get("all", {}), summary.get("left-to-right", {})
        return {"fim_bits_per_byte": a.get("psm_bits_per_byte"), "fim_spm_bits_per_byte": a.get("spm_bits_per_byte"),
                "files_bits_per_byte": ltr.get("bits_per_byte")}  # fmt: skip

    base_results = out / "eval" / "fim-loss" / "base" / "results.json"
    change = _paired(r, json.loads(base_results.read_text())) if base_results.exists() else {}
    held = bench / "fim" / "heldout_files.txt"
    heldout = {
        "unit": "file" if held.exists() else "repo",
        "repositories": len((bench / "fim" / "heldout_repos.txt").read_text().split()),
        "files": len(held.read_text().splitlines()) if held.exists() else None,
    }
    summary = {"base": {"path": rcfg.base, **scores(r.get("baselines", {}).get("base", {}))},
               "adapted": {"path": str(out / "train" / "final"), **scores(r["summary"])},
               "change": change, "format": fmt, "heldout": heldout}  # fmt: skip
    (out / "adapt.json").write_text(json.dumps(summary, indent=1) + "\n")


def _paired(adapted: dict, base: dict) -> dict:
    """Adapted minus base bits per byte on the same held-out items (FIM middles PSM and SPM, files),
    pooled as the suite pools them, with flow/stats.py's interval at one seed: the items resampled by
    held-out repository (files each alone: fim-loss does not record their repository)."""
    import math

    import numpy as np

    from codemill.flow.stats import paired_interval, task_repository

    def items(r: dict, measure: str) -> dict:
        if measure == "files":
            return {str(i): (f["nats"], f["bytes"], str(i)) for i, f in enumerate(r.get("files") or [])}
        return {t["task_id"]: (t[f"{measure}_nats"], t["bytes"], task_repository(t["task_id"]))
                for t in r["tasks"] if f"{measure}_nats" in t}  # fmt: skip

    out = {}
    for measure in ("psm", "spm", "files"):
        a, b = items(adapted, measure), items(base, measure)
        keys = sorted(set(a) & set(b))
        if not keys:
            continue
        diff = np.asarray([[a[k][0] - b[k][0]] for k in keys]) / math.log(2)  # [items, one seed]
        got = paired_interval(diff, [a[k][1] for k in keys], [a[k][2] for k in keys])
        out[measure] = {"bits_per_byte": got.mean, "ci95": [got.low, got.high], "items": len(keys)}
    return out


def write_report(out: Path, base: Path) -> Path:
    """report.md: corpus, held-out benchmarks, training curve, evaluation in the paper's tables."""
    from codemill.eval.tables import paper_tables

    lines = [f"# codemill run: {out.name}", ""]
    manifest = base / "corpus" / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        r, f = m["repositories"], m["files"]
        lines += ["## Corpus", "", f"Sources {', '.join(m['sources'])}: {r['in']:,} repositories in, "
                  f"{r['with_kept_files']:,} with kept files; {f['out']:,} files, {f['bytes_out'] / 1e6:.1f} MB kept; "
                  f"curated in {m['seconds']:.0f} s. Per stage: `codemill corpus stats {base / 'corpus'}`.", ""]  # fmt: skip
    held = base / "bench" / "fim" / "heldout_repos.txt"
    if held.exists():
        n = len(held.read_text().split())
        lines += [f"{n} repositories held out of training for the built FIM and cross-file benchmarks.", ""]
    metrics = out / "train" / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        if rows:
            lines += [
                "## Training",
                "",
                _training_text(rows, out / "train"),
                "",
                "![loss](train/loss.png)",
                "",
            ]
    runs = [json.loads(p.read_text()) for p in sorted((out / "eval").glob("*/results.json"))]
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
                      f"(`{out / 'eval' / 'fim-loss' / 'report.md'}` per language and task type).", "",
                      bought_table(r) + _compressor_rows(r, base), ""]  # fmt: skip
    runs = [r for r in runs if r["suite"] != "fim-loss"]
    if runs:
        lines += ["## Evaluation", "", paper_tables(runs), ""]
    lines += ["## Serve", "", "```", f"codemill serve {out / 'train' / 'final'} --port 8012", "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _compressor_rows(r: dict, base: Path) -> str:
    """gzip / xz rows under What training bought, on the same held-out files: the scale a model's
    bits per byte should be read against (a model above them has learned less than a compressor)."""
    from codemill.eval.loss import heldout_texts
    from codemill.flow.stats import compressed_bits_per_byte

    held, n = base / "bench" / "fim" / "heldout_repos.txt", r["summary"].get("left-to-right", {}).get("files")
    if "base" in r["baselines"] or not n or not held.exists():
        return ""
    got = compressed_bits_per_byte(heldout_texts(base / "corpus", held, n))
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
