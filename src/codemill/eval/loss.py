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

from codemill.eval.suites import fim_eval
from codemill.formats import Format, fit, pieces

BOOTSTRAP = 10_000


def _losses(model, ids: list[int], device) -> np.ndarray:
    """Per-position NLL (nats) of ids[1:] given what precedes."""
    with torch.no_grad():
        x = torch.tensor([ids], device=device)
        return model(x[:, :-1], targets=x[:, 1:]).float().cpu().numpy()


def middle_nll(model, tok, fmt: Format, task, spm: bool, context: int, device) -> tuple[float, int]:
    """(nats, tokens) of the reference middle and the end token after it, given prefix and suffix."""
    r = task.request
    parts = fmt.document(path=r.path, prefix=r.prefix, middle=r.reference, suffix=r.suffix or "", spm=spm)
    got = pieces(parts, tok)
    if sum(len(ids) for ids, _ in got) > context:
        got = fit(got, context)[0]  # prefix head and suffix tail cut, as prompts are
    ids, scored = [], []
    for i, (piece, role) in enumerate(got):
        scored += [role == "middle" or i == len(got) - 1] * len(piece)  # the middle and the end after it
        ids += piece
    losses = _losses(model, ids, device)
    mask = np.asarray(scored[1:], dtype=bool)
    return float(losses[mask].sum()), int(mask.sum())


def file_nll(model, tok, text: str, context: int, device) -> tuple[float, int]:
    """(nats, tokens) of a whole file, left to right, in windows of `context` tokens."""
    ids = tok.encode_batch([text])[0]
    nats, n = 0.0, 0
    for start in range(0, max(len(ids) - 1, 1), context - 1):
        chunk = ids[start : start + context]
        if len(chunk) > 1:
            nats += float(_losses(model, chunk, device).sum())
            n += len(chunk) - 1
    return nats, n


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
    limit: int | None = None, context: int = 2048, console=None,
) -> dict:  # fmt: skip
    """Score a FIM-Eval-shaped benchmark (and held-out `files`), write results.json and report.md."""
    from rich.progress import Progress

    device = next(model.parameters()).device
    model.eval()
    tasks = fim_eval(str(data))[:limit]
    rows = []
    with Progress(console=console, transient=True) as bar:
        job = bar.add_task(f"fim-loss: {name}", total=len(tasks) + len(files))
        for t in tasks:
            row = {"task_id": t.id, "language": t.language, "task_type": t.request.meta["task_type"],
                   "bytes": len(t.request.reference.encode()) + 1}  # fmt: skip
            for layout, spm in (("psm", False), ("spm", True)):
                if spm and not fmt.spm:
                    continue
                row[f"{layout}_nats"], row[f"{layout}_tokens"] = middle_nll(
                    model, tok, fmt, t, spm, context, device
                )
            rows.append(row)
            bar.advance(job)
        ltr = []
        for text in files:
            nats, n = file_nll(model, tok, text, context, device)
            ltr.append({"nats": nats, "tokens": n, "bytes": len(text.encode()) or 1})
            bar.advance(job)
    summary = summarize(rows, ltr, fmt)
    results = {"suite": "fim-loss", "model": name, "summary": summary, "tasks": rows, "files": ltr}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(report(results) + "\n")
    return results


def summarize(rows: list[dict], ltr: list[dict], fmt: Format) -> dict:
    """Per group ("all", language, "language / task type"): bits per byte with interval, per layout."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        for key in ("all", r["language"], f"{r['language']} / {r['task_type']}"):
            groups[key].append(r)
    summary = {}
    for key, rs in groups.items():
        entry = {"tasks": len(rs)}
        nbytes = np.asarray([r["bytes"] for r in rs], dtype=np.float64)
        for layout in ("psm", "spm") if fmt.spm else ("psm",):
            nats = np.asarray([r[f"{layout}_nats"] for r in rs], dtype=np.float64)
            tokens = sum(r[f"{layout}_tokens"] for r in rs)
            entry.update(_scores(nats, nbytes, tokens, f"{layout}_"))
        summary[key] = entry
    if ltr:
        nats = np.asarray([f["nats"] for f in ltr], dtype=np.float64)
        nbytes = np.asarray([f["bytes"] for f in ltr], dtype=np.float64)
        summary["left-to-right"] = {
            "files": len(ltr),
            **_scores(nats, nbytes, sum(f["tokens"] for f in ltr), ""),
        }
    return summary


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
    import pyarrow.parquet as pq

    for f in sorted(Path(corpus).glob("files-*.parquet")):
        for batch in pq.ParquetFile(f).iter_batches(columns=["repo", "content"], batch_size=1024):
            yield from zip(*(c.to_pylist() for c in batch.columns), strict=True)


def heldout_texts(corpus: str | Path, repos_file: str | Path, n: int, seed: int = 0) -> list[str]:
    """Up to n random files of the held-out repositories (`heldout_repos.txt` of a built benchmark)."""
    import random

    names = set(Path(repos_file).read_text().split())
    texts = [text for repo, text in _rows(corpus) if repo in names]
    return random.Random(seed).sample(texts, min(n, len(texts)))


def _corpus_texts(corpus: str | Path, held: set[str], nbytes: int) -> list[str]:
    """The corpus's first `nbytes` of files outside the held-out repositories: the training side."""
    out, seen = [], 0
    for repo, text in _rows(corpus):
        if seen >= nbytes:
            break
        if repo not in held:
            out.append(text)
            seen += len(text.encode())
    return out


def report(results: dict) -> str:
    s = results["summary"]
    lines = [f"# fim-loss: {results['model']}", "",
             "Bits per byte of the reference middle given prefix and suffix (lower is better), 95% bootstrap intervals.", "",
             "| group | tasks | PSM bits/byte | SPM bits/byte |", "|---|---|---|---|"]  # fmt: skip
    for key, e in s.items():
        if key != "left-to-right":
            lines.append(f"| {key} | {e['tasks']} | {interval(e, 'psm_')} | {interval(e, 'spm_')} |")
    if "left-to-right" in s:
        e = s["left-to-right"]
        lines += ["", f"Left to right on {e['files']} held-out files: {interval(e, '')} bits per byte."]
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


def what_training_bought(checkpoint: str | Path, corpus: str | Path, bench: str | Path, out: str | Path, *,
                         files: int = 100, limit: int | None = None, train_texts: int = 10_000_000,
                         console=None) -> dict:  # fmt: skip
    """fim-loss of a trained checkpoint beside its untrained initialisation and a unigram model of the
    training corpus, on the same held-out middles and files: learning shows here while exact match is 0."""
    from codemill.data.tokenizer import load_tokenizer
    from codemill.formats import checkpoint_format
    from codemill.model.hf import import_hf
    from codemill.model.llama import Llama

    checkpoint, bench, out = Path(checkpoint), Path(bench), Path(out)
    tok, fmt = load_tokenizer(checkpoint), checkpoint_format(checkpoint)
    held = bench / "fim" / "heldout_repos.txt"
    texts = heldout_texts(corpus, held, files)
    trained = import_hf(checkpoint)
    kw = {"files": texts, "limit": limit, "context": trained.cfg.max_seq_len, "console": console}
    results = fim_loss(trained, tok, fmt, bench / "fim", out, name=checkpoint.name, **kw)
    torch.manual_seed(0)
    init = Llama(trained.cfg)
    init.init_weights()
    untrained = fim_loss(init, tok, fmt, bench / "fim", out / "untrained", name="untrained", **kw)
    logp = unigram(
        tok, _corpus_texts(corpus, set(held.read_text().split()), train_texts), trained.cfg.vocab_size
    )
    results["baselines"] = {
        "untrained": untrained["summary"],
        "unigram": unigram_summary(logp, tok, fmt, fim_eval(str(bench / "fim"))[:limit], texts),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(report(results) + "\n\n" + bought_table(results) + "\n")
    return results


def bought_table(results: dict) -> str:
    """Markdown: bits per byte of the trained model, its untrained initialisation and the unigram model."""
    s, base = results["summary"], results.get("baselines", {})
    rows = [
        ("trained", s),
        ("untrained initialisation", base.get("untrained", {})),
        ("unigram of the corpus", base.get("unigram", {})),
    ]
    lines = [
        "| model | FIM middles, PSM | FIM middles, SPM | held-out files, left to right |",
        "|---|---|---|---|",
    ]
    for name, summ in rows:
        a, ltr = summ.get("all", {}), summ.get("left-to-right", {})
        lines.append(f"| {name} | {interval(a, 'psm_')} | {interval(a, 'spm_')} | {interval(ltr, '')} |")
    return "\n".join(lines)
