"""Test loss, as Bavarian et al. (2022) measure "FIM for free": loss does not sit on the floor where
generation metrics do at small scale.

- FIM loss: the negative log-likelihood of each task's reference middle (and the end token after it:
  stopping is part of infilling) given its prefix and suffix, laid out by the model's format in PSM and
  in SPM, the prompt cut as inference cuts it;
- left-to-right loss: every token of held-out files, in windows of the model's context.

Reported as nats per token and bits per byte (nats / ln 2 / UTF-8 bytes of the scored text, a middle's
end counted as one byte, so an empty middle is scored too), which is comparable across tokenizers, per
language and task type with bootstrap 95% intervals over tasks.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from codemill.curate.corpus import corpus_rows
from codemill.errors import UserError
from codemill.eval.suites import crosscodeeval, fim_eval, subset
from codemill.flow.layout import HELDOUT_FILES, HELDOUT_REPOS
from codemill.formats import Format, Part, fit, pieces

BOOTSTRAP = 10_000


Scored = tuple[list[int], np.ndarray]  # token ids, and which of ids[1:] are scored targets


def score(
    model, seqs: list[Scored], device, batch_tokens: int = 16_384, advance=None
) -> list[tuple[float, int]]:
    """(nats, tokens) of each sequence's scored targets. Sequences of similar length run together,
    right-padded (causal attention: what follows a position cannot change it), and the head runs only
    where a target is scored (most of a FIM sequence is context)."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    i = 0
    while i < len(order):
        j = i + 1  # the batch: as many as fit batch_tokens at the longest one's length
        while j < len(order) and (j - i + 1) * len(seqs[order[j]][0]) <= batch_tokens:
            j += 1
        group = order[i:j]
        width = len(seqs[group[-1]][0])
        x = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width - 1, dtype=torch.bool)
        for row, k in enumerate(group):
            ids, scored = seqs[k]
            x[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(scored)] = torch.from_numpy(scored)
        x, mask = x.to(device), mask.to(device)
        with torch.no_grad():
            h = model.hidden(x[:, :-1])[mask]
            nll = torch.nn.functional.cross_entropy(
                model.lm_head(h).float(), x[:, 1:][mask], reduction="none"
            )
        counts = mask.sum(1).tolist()
        for k, part in zip(group, nll.split(counts), strict=True):
            out[k] = (float(part.sum()), len(part))
        if advance is not None:
            advance(len(group))
        i = j
    return out


def scored_ids(tok, parts: list[Part], context: int) -> Scored:
    """The `middle` part and the part after it scored, the pieces cut as prompts are."""
    got = pieces(parts, tok)
    if sum(len(ids) for ids, _ in got) > context:
        got = fit(got, context)[0]  # prefix head and suffix tail cut, as prompts are
    ids, scored = [], []
    for i, (piece, role) in enumerate(got):
        scored += [role == "middle" or i == len(got) - 1] * len(piece)  # the middle and the end after it
        ids += piece
    return ids, np.asarray(scored[1:], dtype=bool)


def middle_ids(tok, fmt: Format, task, spm: bool, context: int) -> Scored:
    """The reference middle and the end token after it, given prefix and suffix."""
    r = task.request
    parts = fmt.document(path=r.path, prefix=r.prefix, middle=r.reference, suffix=r.suffix or "", spm=spm)
    return scored_ids(tok, parts, context)


def line_ids(tok, fmt: Format, task, context: int) -> Scored:
    """A cross-file task's target line after its prompt, built as generation builds it: the
    cross-file snippets that fit their budget (none in-file), then the file up to the cursor."""
    r = task.request
    parts = [*fmt.prompt(r.prefix, path=r.path, context=r.snippets(tok)), Part("middle", r.reference)]
    return scored_ids(tok, parts, context)


def file_windows(ids: list[int], context: int) -> list[Scored]:
    """A whole file left to right, in windows of `context` tokens, every token after the first scored."""
    chunks = (ids[s : s + context] for s in range(0, max(len(ids) - 1, 1), context - 1))
    return [(c, np.ones(len(c) - 1, dtype=bool)) for c in chunks if len(c) > 1]


def middle_nll(model, tok, fmt: Format, task, spm: bool, context: int, device) -> tuple[float, int]:
    """(nats, tokens) of one FIM task's middle and end."""
    return score(model, [middle_ids(tok, fmt, task, spm, context)], device)[0]


def line_nll(model, tok, fmt: Format, task, context: int, device) -> tuple[float, int]:
    """(nats, tokens) of one cross-file task's target line."""
    return score(model, [line_ids(tok, fmt, task, context)], device)[0]


def bootstrap(nats: np.ndarray, nbytes: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Bits per byte (pooled: sum of nats over sum of bytes) and its 95% interval, tasks resampled."""
    point = float(nats.sum() / nbytes.sum() / math.log(2))
    if len(nats) < 2:
        return point, point, point
    idx = np.random.default_rng(seed).integers(0, len(nats), size=(BOOTSTRAP, len(nats)))
    reps = nats[idx].sum(1) / nbytes[idx].sum(1) / math.log(2)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return point, float(lo), float(hi)


def fim_loss(
    model, tok, fmt: Format, data: str | Path, out: str | Path, *, name: str, files: list[str] = (),
    crossfile: str | Path | None = None, limit: int | None = None, context: int = 2048, console=None,
) -> dict:  # fmt: skip
    """Score a FIM-Eval-shaped benchmark, held-out `files` and the target lines of a CrossCodeEval-shaped
    benchmark (`crossfile`, in-file and with retrieved context); write results.json and report.md."""
    from codemill.progress import Bar

    device = next(model.parameters()).device
    model.eval()
    tasks = subset(fim_eval(str(data)), limit)
    lines = _crossfile_tasks(crossfile, limit) if crossfile else []
    seqs: list[Scored] = []
    where: list[tuple[dict, str]] = []  # per sequence: the row its nats add to, and the measure's key

    def add(row: dict, key: str, *scored: Scored) -> None:
        row[f"{key}nats"], row[f"{key}tokens"] = 0.0, 0
        seqs.extend(scored)
        where.extend([(row, key)] * len(scored))

    rows = [{"task_id": t.id, "language": t.language, "task_type": t.request.meta["task_type"],
             "bytes": len(t.request.reference.encode()) + 1} for t in tasks]  # fmt: skip
    for row, t in zip(rows, tasks, strict=True):
        for layout, spm in (("psm", False), ("spm", True)) if fmt.spm else (("psm", False),):
            add(row, f"{layout}_", middle_ids(tok, fmt, t, spm, context))
    ltr = [{"bytes": len(text.encode()) or 1} for text in files]
    for row, ids in zip(ltr, tok.encode_batch(list(files)), strict=True):
        add(row, "", *file_windows(ids, context))
    xrows = [{"task_id": t.id, "language": t.language, "bytes": len(t.request.reference.encode()) or 1}
             for t, _ in lines]  # fmt: skip
    for row, pair in zip(xrows, lines, strict=True):
        for setting, t in zip(("infile", "retrieval"), pair, strict=True):
            add(row, f"{setting}_", line_ids(tok, fmt, t, context))
    with Bar(console) as bar:
        job = bar.add_task(f"fim-loss: {name}", total=len(seqs))
        scores = score(model, seqs, device, advance=lambda n: bar.advance(job, n))
    for (row, key), (nats, n) in zip(where, scores, strict=True):
        row[f"{key}nats"] += nats
        row[f"{key}tokens"] += n
    summary = summarize(rows, ltr, fmt, xrows)
    results = {"suite": "fim-loss", "model": name, "summary": summary, "tasks": rows, "files": ltr,
               "crossfile": xrows}  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(report(results) + "\n")
    return results


def _crossfile_tasks(data: str | Path, limit: int | None) -> list[tuple]:
    """Each cross-file task in-file and with its retrieved snippets, paired by task id."""
    retrieval = {t.id: t for t in crosscodeeval(str(data), "retrieval")}
    return [
        (t, retrieval[t.id]) for t in subset(crosscodeeval(str(data), "infile"), limit) if t.id in retrieval
    ]


def summarize(rows: list[dict], ltr: list[dict], fmt: Format, xrows: list[dict] = ()) -> dict:
    """Per group ("all", language, "language / task type"): bits per byte with interval, per layout;
    "left-to-right" for the files, "cross-file" (and "cross-file / language") per context setting."""
    summary = {}
    for key, rs in _groups(rows, ("all", "{language}", "{language} / {task_type}")).items():
        summary[key] = _entry(rs, ("psm", "spm") if fmt.spm else ("psm",))
    if ltr:
        nats = np.asarray([f["nats"] for f in ltr], dtype=np.float64)
        nbytes = np.asarray([f["bytes"] for f in ltr], dtype=np.float64)
        summary["left-to-right"] = {
            "files": len(ltr),
            **_scores(nats, nbytes, sum(f["tokens"] for f in ltr), ""),
        }
    for key, rs in _groups(xrows, ("cross-file", "cross-file / {language}")).items():
        summary[key] = _entry(rs, ("infile", "retrieval"))
    return summary


def _groups(rows, keys: tuple[str, ...]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        for key in keys:
            groups[key.format(**r)].append(r)
    return groups


def _entry(rows: list[dict], measures: tuple[str, ...]) -> dict:
    entry = {"tasks": len(rows)}
    nbytes = np.asarray([r["bytes"] for r in rows], dtype=np.float64)
    for m in measures:
        nats = np.asarray([r[f"{m}_nats"] for r in rows], dtype=np.float64)
        entry.update(_scores(nats, nbytes, sum(r[f"{m}_tokens"] for r in rows), f"{m}_"))
    return entry


def _scores(nats: np.ndarray, nbytes: np.ndarray, tokens: int, prefix: str) -> dict[str, float]:
    bpb, lo, hi = bootstrap(nats, nbytes)
    return {f"{prefix}bits_per_byte": bpb, f"{prefix}ci95_low": lo, f"{prefix}ci95_high": hi,
            f"{prefix}nats_per_token": float(nats.sum() / max(tokens, 1))}  # fmt: skip


def interval(e: dict, prefix: str) -> str:
    """ "0.912 [0.871, 0.955]": bits per byte and its 95% interval, or "-"."""
    if f"{prefix}bits_per_byte" not in e:
        return "-"
    return f"{e[prefix + 'bits_per_byte']:.3f} [{e[prefix + 'ci95_low']:.3f}, {e[prefix + 'ci95_high']:.3f}]"


def _rows(corpus: str | Path):
    return corpus_rows(corpus, ["repo", "path", "content"], 1024)


def _held(repos_file: str | Path):
    """Whether (repo, path) is held out: its repository is in `heldout_repos.txt`, or the file is in
    the `heldout_files.txt` beside it (benchmarks built holding out files)."""
    repos_file = Path(repos_file)
    names = set(repos_file.read_text().split())
    files_file = repos_file.with_name(HELDOUT_FILES)
    lines = files_file.read_text().splitlines() if files_file.exists() else []
    files = {tuple(line.split("\t", 1)) for line in lines if "\t" in line}
    return lambda repo, path: repo in names or (repo, path) in files


def heldout_texts(corpus: str | Path, repos_file: str | Path, n: int, seed: int = 0) -> list[str]:
    """Up to n random held-out files (`heldout_repos.txt` of a built benchmark, and its files list)."""
    import random

    held = _held(repos_file)
    texts = [text for repo, path, text in _rows(corpus) if held(repo, path)]
    return random.Random(seed).sample(texts, min(n, len(texts)))


def _corpus_texts(corpus: str | Path, held, nbytes: int) -> list[str]:
    """The corpus's first `nbytes` of files that are not held out: the training side."""
    out, seen = [], 0
    for repo, path, text in _rows(corpus):
        if seen >= nbytes:
            break
        if not held(repo, path):
            out.append(text)
            seen += len(text.encode())
    return out


def report(results: dict) -> str:
    s = results["summary"]
    lines = [f"# fim-loss: {results['model']}", "",
             "Bits per byte of the reference middle given prefix and suffix (lower is better), 95% bootstrap intervals.", "",
             "| group | tasks | PSM bits/byte | SPM bits/byte |", "|---|---|---|---|"]  # fmt: skip
    for key, e in s.items():
        if key != "left-to-right" and not key.startswith("cross-file"):
            lines.append(f"| {key} | {e['tasks']} | {interval(e, 'psm_')} | {interval(e, 'spm_')} |")
    if "left-to-right" in s:
        e = s["left-to-right"]
        lines += ["", f"Left to right on {e['files']} held-out files: {interval(e, '')} bits per byte."]
    if "cross-file" in s:
        lines += ["", "Cross-file target lines, bits per byte after the file up to the cursor, alone and after the "
                  "BM25-retrieved snippets of the repository's other files:", "",
                  "| group | tasks | in-file context | retrieved context |", "|---|---|---|---|"]  # fmt: skip
        for key, e in s.items():
            if key.startswith("cross-file"):
                lines.append(
                    f"| {key} | {e['tasks']} | {interval(e, 'infile_')} | {interval(e, 'retrieval_')} |"
                )
    return "\n".join(lines)


def unigram(tok, texts: list[str], vocab: int) -> np.ndarray:
    """Log-probabilities (nats) of a unigram model of `texts`' tokens, add-one smoothed: the floor a
    model that ignores context reaches."""
    counts = np.ones(vocab, dtype=np.float64)
    for ids in tok.encode_batch(texts):
        counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab)[:vocab]
    return np.log(counts / counts.sum())


def unigram_summary(logp: np.ndarray, tok, fmt: Format, tasks, texts: list[str]) -> dict:
    """bits per byte of the same middles (and their end) and files under the unigram model (the same
    for both layouts: it ignores context)."""
    end = tok.token_id(fmt.eos)
    middles = tok.encode_batch([t.request.reference for t in tasks])
    nats = np.asarray([-(logp[ids].sum() + logp[end]) for ids in middles])
    nbytes = np.asarray([len(t.request.reference.encode()) + 1 for t in tasks], dtype=np.float64)
    tokens = sum(map(len, middles)) + len(tasks)
    out = {
        "all": {k: v for layout in ("psm_", "spm_") for k, v in _scores(nats, nbytes, tokens, layout).items()}
    }
    if texts:
        ids = tok.encode_batch(texts)
        nats = np.asarray([-logp[i].sum() for i in ids])
        nbytes = np.asarray([len(t.encode()) for t in texts], dtype=np.float64)
        out["left-to-right"] = {"files": len(texts), **_scores(nats, nbytes, sum(map(len, ids)), "")}
    return out


def measure(checkpoint: str | Path, out: str | Path, *, data: str | Path | None = None, format: str | None = None,
            corpus: str | Path | None = None, files: int = 100, crossfile: str | Path | None = None,
            limit: int | None = None, baselines: bool = False, base: str | Path | None = None,
            train_texts: int = 10_000_000, console=None) -> dict:  # fmt: skip
    """The fim-loss suite (`codemill eval fim-loss`, and a run's fim-loss stage): a checkpoint on a
    FIM-Eval-shaped directory `data`, `files` held-out files of `corpus` (those its
    heldout_repos.txt names) and the target lines of a CrossCodeEval-shaped directory `crossfile`.
    With `baselines`, beside it its untrained initialisation and a unigram model of the training
    corpus, on the same middles, files and lines: learning shows here while exact match is 0. `base`:
    the checkpoint it was adapted from, scored the same way (with the same tokenizer and format) in
    place of the untrained initialisation: what adaptation bought."""
    from codemill.data.tokenizer import load_tokenizer
    from codemill.formats import checkpoint_format, trained_context
    from codemill.model.hf import import_hf
    from codemill.model.llama import Llama

    if data is None:
        raise UserError("--data: a FIM-Eval-shaped directory (`codemill bench build fim` writes one)")
    if not (Path(checkpoint) / "config.json").exists():
        raise UserError(f"{checkpoint}: fim-loss needs a checkpoint directory (it reads the logits)")
    checkpoint, data, out = Path(checkpoint), Path(data), Path(out)
    held = data / HELDOUT_REPOS
    texts = heldout_texts(corpus, held, files) if corpus and held.exists() else []
    trained = import_hf(checkpoint)
    tok, fmt = load_tokenizer(checkpoint), checkpoint_format(checkpoint, format)
    context = trained_context(checkpoint, trained.cfg.max_seq_len)
    kw = {"files": texts, "crossfile": crossfile, "limit": limit, "context": context,
          "console": console}  # fmt: skip
    results = fim_loss(trained, tok, fmt, data, out, name=checkpoint.name, **kw)
    if not baselines:
        return results
    if base is not None:
        before = fim_loss(import_hf(base), tok, fmt, data, out / "base", name=Path(base).name, **kw)
        results["baselines"] = {"base": before["summary"]}
    else:
        torch.manual_seed(0)
        init = Llama(trained.cfg)
        init.init_weights()
        untrained = fim_loss(init, tok, fmt, data, out / "untrained", name="untrained", **kw)
        logp = unigram(tok, _corpus_texts(corpus, _held(held), train_texts), trained.cfg.vocab_size)
        results["baselines"] = {
            "untrained": untrained["summary"],
            "unigram": unigram_summary(logp, tok, fmt, subset(fim_eval(str(data)), limit), texts),
        }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(report(results) + "\n\n" + bought_table(results) + "\n")
    return results


def measured(results: dict, out: Path) -> str:
    """One line of what `codemill eval fim-loss` measured."""
    s = results["summary"]
    return (f"fim-loss {results['model']}: FIM middles PSM {interval(s['all'], 'psm_')}, SPM "
            f"{interval(s['all'], 'spm_')} bits/byte; held-out files {interval(s.get('left-to-right', {}), '')}; "
            f"{out / 'report.md'}")  # fmt: skip


def bought(results: dict) -> str:
    """One line of what a run's fim-loss stage measured, beside its baselines."""
    s = results["summary"]
    line = f"fim-loss: FIM middles {s['all']['psm_bits_per_byte']:.3f} bits/byte (PSM)"
    if (base := results.get("baselines")) and "base" in base:
        line += f", base before adaptation {base['base']['all']['psm_bits_per_byte']:.3f}"
    elif base:
        line += (f", untrained {base['untrained']['all']['psm_bits_per_byte']:.3f}, unigram "
                 f"{base['unigram']['all']['psm_bits_per_byte']:.3f}")  # fmt: skip
    return line


def bought_table(results: dict) -> str:
    """Markdown: bits per byte of the trained model, its untrained initialisation and the unigram model."""
    s, base = results["summary"], results.get("baselines", {})
    rows = [("trained", s)] + (
        [("base, before adaptation", base["base"])]
        if "base" in base
        else [
            ("untrained initialisation", base.get("untrained", {})),
            ("unigram of the corpus", base.get("unigram", {})),
        ]
    )
    lines = [
        "| model | FIM middles, PSM | FIM middles, SPM | held-out files, left to right |",
        "|---|---|---|---|",
    ]
    for name, summ in rows:
        a, ltr = summ.get("all", {}), summ.get("left-to-right", {})
        lines.append(f"| {name} | {interval(a, 'psm_')} | {interval(a, 'spm_')} | {interval(ltr, '')} |")
    return "\n".join(lines)
