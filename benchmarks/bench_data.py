"""Benchmark the data stage on a curated corpus (default: the demo corpus `make demo` writes).

1. Stream throughput per core: ordering + objectives + tokenization + packing, one full pass over a
   shard of the corpus, against raw tokenization of the same files with the same tokenizer.
   And the padding fraction at 1k, 4k and 32k windows.
2. SFIM middle lengths (bytes, lines) under the literal rule and the weighted policy.
3. Dependency order: how many import edges have the import placed first, the printed walk of
   Algorithm 1 against Kahn's order (ours), over the corpus's repositories that have imports.
4. Token-level objective mix (the share of loss tokens per objective) of the ablation's variants at the
   demo's 512-token window, context-level against document-level objectives, on random repositories;
   and SFIM alone, to show how often SFIM's rule finds a function in a piece.
5. Tokenizer: our byte-level BPE against a SentencePiece BPE of the same vocabulary trained on the
   same text: training time, bytes per token on held-out files, exact round trip.

    python benchmarks/bench_data.py --corpus runs/demo/corpus
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # per-core figures: the tokenizer's Rust threads off

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from codemill.data.config import DataConfig
from codemill.data.deps import dependencies, dependency_kahn, dependency_walk
from codemill.data.objectives import SfimPolicy, Span, sfim_span
from codemill.data.repo import CodeCorpus
from codemill.data.stats import StreamStats
from codemill.data.stream import TrainingStream
from codemill.data.tokenizer import HFTokenizer, chunks, corpus_texts, save_tokenizer, train_bpe
from codemill.formats import get_format

console = Console(width=140)


def tokenizer_for(corpus: Path, vocab: int, out: Path) -> HFTokenizer:
    fmt = get_format("codemill")
    save_tokenizer(
        train_bpe(chunks(corpus_texts(corpus, 50_000_000)), vocab, fmt, show_progress=False), out, fmt
    )
    return HFTokenizer.load(out / "tokenizer.json")


def bench_stream(corpus: CodeCorpus, tok: HFTokenizer, shards: int, seq_len: int) -> dict:
    files = [f for i in range(0, len(corpus), shards) for f in corpus.read(i)[1]]
    texts = [f.text for f in files]
    t0 = time.perf_counter()
    raw = sum(len(ids) for ids in tok.encode_batch(texts))
    t_raw = time.perf_counter() - t0
    rows = {}
    for name, cfg in (
        (
            "stream: NTP only, random order",
            DataConfig(seq_len=seq_len, ordering={"random": 1}, code_objectives={"ntp": 1}),
        ),
        ("stream: Algorithm 1 + SFIM/FIM/NTP (paper)", DataConfig(seq_len=seq_len)),
    ):
        stats = StreamStats()
        stream = TrainingStream(corpus, tok, cfg, world=shards, stats=stats, epochs=1)
        t0 = time.perf_counter()
        tokens = sum(len(w["tokens"]) for w in stream)
        rows[name] = (tokens, time.perf_counter() - t0, stats.summary())
    table = Table(
        title=f"stream throughput, 1 core, shard 1/{shards}: {len(files)} files, {sum(map(len, texts)) / 1e6:.1f} M chars"
    )
    for col in ("what", "tokens", "seconds", "tokens/s/core", "trained tokens/s/core", "vs raw tokenization"):
        table.add_column(col, justify="left" if col == "what" else "right")
    raw_rate = raw / t_raw
    table.add_row(
        "raw tokenization (encode_batch, 1 thread)",
        f"{raw:,}",
        f"{t_raw:.1f}",
        "",
        f"{raw_rate:,.0f}",
        "1.00",
    )
    for name, (tokens, dt, summary) in rows.items():
        trained = tokens * (1 - summary["padding_fraction"]) / dt
        table.add_row(
            name,
            f"{tokens:,}",
            f"{dt:.1f}",
            f"{tokens / dt:,.0f}",
            f"{trained:,.0f}",
            f"{trained / raw_rate:.2f}",
        )
    console.print(table)
    return rows["stream: Algorithm 1 + SFIM/FIM/NTP (paper)"][2]


def bench_padding(corpus: CodeCorpus, tok: HFTokenizer, tokens: int = 3_000_000) -> None:
    table = Table(title=f"padding by window length ({tokens / 1e6:.0f} M tokens of shard 1/16)")
    for col in ("seq_len", "padding", "FIM documents spilled", "middles longer than a window"):
        table.add_column(col, justify="right")
    for seq_len in (1024, 4096, 32768):
        stats = StreamStats()
        stream = TrainingStream(corpus, tok, DataConfig(seq_len=seq_len), world=16, stats=stats, epochs=1)
        n = 0
        for w in stream:
            n += len(w["tokens"])
            if n >= tokens:
                break
        s = stats.summary()
        table.add_row(
            f"{seq_len:,}",
            f"{s['padding_fraction']:.1%}",
            str(s["events"].get("fim_context_spilled", 0)),
            str(s["events"].get("middle_longer_than_window", 0)),
        )
    console.print(table)


def bench_sfim(corpus: CodeCorpus, n: int) -> None:
    files = [f for i in range(len(corpus)) for f in corpus.read(i)[1]]
    random.Random(0).shuffle(files)
    files = files[:n]
    table = Table(title=f"SFIM middle lengths on {len(files)} corpus files")
    for col in ("policy", "applied", "bytes p10/p50/p90", "lines p10/p50/p90"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, policy in (
        ("literal (uniform node, random start, any line end)", SfimPolicy("literal")),
        ("weighted (default)", SfimPolicy()),
        ("weighted, no node-start/end snapping", SfimPolicy(start_at_node=0, end_at_node=0)),
        ("weighted, whole nodes only", SfimPolicy(start_at_node=1, end_at_node=1)),
    ):
        rng = random.Random(0)
        spans = [(f, s) for f in files if isinstance(s := sfim_span(f, rng, policy), Span)]
        b = [s.end - s.start for _, s in spans]
        lines = [f.src[s.start : s.end].count(b"\n") + 1 for f, s in spans]
        q = lambda xs: " / ".join(f"{v:.0f}" for v in np.percentile(xs, [10, 50, 90]))  # noqa: E731
        table.add_row(name, f"{len(spans) / len(files):.0%}", q(b), q(lines))
    console.print(table)


def bench_dependency(corpus: CodeCorpus, repos: int, seeds: int = 5) -> None:
    graphs = []
    for i in random.Random(0).sample(range(len(corpus)), min(repos, len(corpus))):
        deps = dependencies(corpus.read(i)[1])
        if any(deps):
            graphs.append(deps)
    table = Table(title=f"Dependency order on {len(graphs)} repositories with imports, {seeds} seeds each")
    for col in ("order", "import edges", "import placed first", "ms per repository"):
        table.add_column(col, justify="left" if col == "order" else "right")
    for name, order in (
        ("printed walk (default)", dependency_walk),
        ("Kahn (dependency_kahn)", dependency_kahn),
    ):
        first = edges = 0
        t0 = time.perf_counter()
        for deps in graphs:
            for seed in range(seeds):
                pos = {f: k for k, f in enumerate(order(deps, random.Random(seed)))}
                first += sum(pos[j] < pos[i] for i, d in enumerate(deps) for j in d)
                edges += sum(map(len, deps))
        ms = (time.perf_counter() - t0) * 1000 / (len(graphs) * seeds)
        table.add_row(name, f"{edges:,}", f"{first / edges:.1%}", f"{ms:.2f}")
    console.print(table)


def bench_mix(corpus: CodeCorpus, tok: HFTokenizer, seq_len: int, windows: int) -> None:
    from codemill.flow.ablate import VARIANTS

    table = Table(title=f"Share of loss tokens per objective, {windows:,} windows of {seq_len + 1} tokens")
    for col in ("objectives", "variant", "repositories", "SFIM", "FIM", "NTP", "padding", "SFIM fallbacks"):
        table.add_column(col, justify="left" if col in ("objectives", "variant") else "right")
    runs = [
        (level, name, VARIANTS[name])
        for level in ("context", "document")
        for name in ("paper", "ntp-fim", "ntp")
    ]
    runs.append(("context", "SFIM only", {"code_objectives": {"sfim": 1.0}}))
    runs.append(
        ("context", "SFIM only, anywhere", {"code_objectives": {"sfim": 1.0}, "sfim_scope": "anywhere"})
    )
    runs.append(("context", "paper-sfim-anywhere", VARIANTS["paper-sfim-anywhere"]))
    for level, name, over in runs:
        stats = StreamStats()
        s = TrainingStream(corpus, tok, DataConfig(seq_len=seq_len, fim_level=level, **over), stats=stats)
        random.Random(1).shuffle(s.units["code"])  # random repositories, the same for every run
        for _ in range(windows):
            next(s)
        sm = stats.summary()
        t = sm["tokens_by_objective"]
        loss = sum(v for k, v in t.items() if k != "padding") or 1
        shares = [f"{t.get(k, 0) / loss:.1%}" for k in ("sfim", "fim", "ntp")]
        fallbacks = ", ".join(f"{k} {v}" for k, v in sorted(sm["fallbacks"].items())) or "-"
        table.add_row(level, name, str(sm["repos"]), *shares, f"{sm['padding_fraction']:.1%}", fallbacks)
    console.print(table)


def bench_tokenizer(corpus: Path, vocab: int, train_bytes: int, held_out: int) -> None:
    import sentencepiece as spm

    texts = list(corpus_texts(corpus, train_bytes + 20_000_000))
    random.Random(0).shuffle(texts)
    test, train = texts[:held_out], texts[held_out:]
    size, kept = 0, []
    for t in train:
        kept.append(t)
        size += len(t.encode())
        if size >= train_bytes:
            break
    test_bytes = sum(len(t.encode()) for t in test)
    table = Table(
        title=f"tokenizers, vocabulary {vocab:,}, trained on {size / 1e6:.0f} MB, {held_out} held-out files"
    )
    for col in ("tokenizer", "train s", "bytes/token", "exact round trip"):
        table.add_column(col, justify="left" if col == "tokenizer" else "right")
    t0 = time.perf_counter()
    hf = HFTokenizer(train_bpe(chunks(kept), vocab, get_format("codemill"), show_progress=False))
    t_hf = time.perf_counter() - t0
    ids = hf.encode_batch(test)
    exact = all(hf.decode(i) == t for i, t in zip(ids, test, strict=True))
    table.add_row(
        "codemill byte-level BPE (HF tokenizers)",
        f"{t_hf:.1f}",
        f"{test_bytes / sum(map(len, ids)):.2f}",
        str(exact),
    )
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(chunks(kept, 4000))),
            model_prefix=f"{d}/sp",
            vocab_size=vocab,
            model_type="bpe",
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            byte_fallback=True,
            split_digits=True,
            max_sentence_length=16384,
            num_threads=1,
            minloglevel=2,
        )
        t_sp = time.perf_counter() - t0
        sp = spm.SentencePieceProcessor(model_file=f"{d}/sp.model")
        sids = sp.encode(test)
        exact = all(sp.decode(i) == t for i, t in zip(sids, test, strict=True))
    table.add_row(
        "SentencePiece BPE (code settings)",
        f"{t_sp:.1f}",
        f"{test_bytes / sum(map(len, sids)):.2f}",
        str(exact),
    )
    console.print(table)
    console.print(f"training time ratio SentencePiece / ours: {t_sp / t_hf:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("runs/demo/corpus"))
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--shards", type=int, default=8, help="Measure a full pass over 1 of this many shards.")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--sfim-files", type=int, default=3000)
    ap.add_argument("--dep-repos", type=int, default=400)
    ap.add_argument("--mix-windows", type=int, default=6000)
    ap.add_argument("--train-mb", type=int, default=40)
    ap.add_argument("--held-out", type=int, default=300)
    args = ap.parse_args()
    corpus = CodeCorpus(args.corpus)
    with tempfile.TemporaryDirectory() as d:
        tok = tokenizer_for(args.corpus, args.vocab, Path(d))
        summary = bench_stream(corpus, tok, args.shards, args.seq_len)
        bench_padding(corpus, tok)
        bench_mix(corpus, tok, 512, args.mix_windows)
    console.print(
        f"realized mix {summary['objectives']}, padding {summary['padding_fraction']:.1%}, "
        f"fallbacks {summary['fallbacks']}, events {summary['events']}"
    )
    bench_sfim(corpus, args.sfim_files)
    bench_dependency(corpus, args.dep_repos)
    bench_tokenizer(args.corpus, args.vocab, args.train_mb * 1_000_000, args.held_out)


if __name__ == "__main__":
    main()
