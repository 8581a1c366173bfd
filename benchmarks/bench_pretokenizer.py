"""Choose the BPE pre-tokenizer by measurement: compression per language and agreement with llama.cpp.

For each pre-tokenizer of data/tokenizer.py, a byte-level BPE of the same vocabulary is trained on the
same text (repositories not held out), then on held-out repositories' files:
- bytes per token, per language of the corpus (higher is better: more code per context window);
- token-for-token agreement with llama.cpp: the tokenizer exported to GGUF (with a tiny random model,
  since the file needs one) and every held-out file tokenized by llama.cpp through llama-cpp-python.

    python benchmarks/bench_pretokenizer.py --corpus runs/demo/corpus
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "2")

import argparse
import random
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import torch
import xxhash
from rich.console import Console
from rich.table import Table

from codemill.data.tokenizer import LLAMA_CPP_PRETOKENIZERS, PRETOKENIZERS, HFTokenizer, chunks, train_bpe
from codemill.formats import get_format
from codemill.model.gguf import export_gguf
from codemill.model.hf import export_hf
from codemill.model.llama import Llama, ModelConfig

console = Console(width=160)


def split_corpus(corpus: Path, train_bytes: int, per_lang: int) -> tuple[list[str], dict[str, list[str]]]:
    """Training text: random files of 90% of the repositories; held out: up to `per_lang` random files
    per language of the other 10%."""
    train, held = [], defaultdict(list)
    for f in sorted(corpus.glob("files-*.parquet")):
        for batch in pq.ParquetFile(f).iter_batches(columns=["repo", "lang", "content"], batch_size=512):
            for repo, lang, text in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                (held[lang] if xxhash.xxh64_intdigest(repo) % 10 == 0 else train).append(text)
    rng = random.Random(0)
    rng.shuffle(train)
    seen = 0
    for k, text in enumerate(train):
        seen += len(text.encode())
        if seen >= train_bytes:
            train = train[: k + 1]
            break
    return train, {lang: rng.sample(texts, min(per_lang, len(texts))) for lang, texts in held.items()}


def llama_cpp_tokens(tok_dir: Path, vocab: int, out: Path, texts: list[str]) -> list[list[int]]:
    import llama_cpp

    cfg = ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                      num_kv_heads=1, max_seq_len=256)  # fmt: skip
    ckpt = out / "ckpt"
    export_hf(Llama(cfg), ckpt, dtype=torch.float32)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).write_bytes((tok_dir / name).read_bytes())
    export_gguf(ckpt, out / "m.gguf", "f32", fmt="codemill")
    llm = llama_cpp.Llama(model_path=str(out / "m.gguf"), vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("runs/demo/corpus"))
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--train-mb", type=int, default=30)
    ap.add_argument("--per-lang", type=int, default=300, help="Held-out files per language at most.")
    args = ap.parse_args()
    from codemill.data.tokenizer import save_tokenizer

    train, held = split_corpus(args.corpus, args.train_mb * 1_000_000, args.per_lang)
    langs = sorted(held, key=lambda lang: -sum(map(len, held[lang])))
    texts = [t for lang in langs for t in held[lang]]
    fmt = get_format("codemill")
    rows = {}
    for name in PRETOKENIZERS:
        t0 = time.perf_counter()
        tok = HFTokenizer(train_bpe(chunks(train), args.vocab, fmt, show_progress=False, pretokenizer=name))
        seconds = time.perf_counter() - t0
        ids = tok.encode_batch(texts)
        per_lang, k = {}, 0
        for lang in langs:
            n = len(held[lang])
            nbytes = sum(len(t.encode()) for t in held[lang])
            per_lang[lang] = nbytes / max(1, sum(map(len, ids[k : k + n])))
            k += n
        agree = "not run (llama.cpp has no such pre-tokenizer)"
        if name in LLAMA_CPP_PRETOKENIZERS:
            with tempfile.TemporaryDirectory() as d:
                save_tokenizer(tok.tok, Path(d) / "tok", fmt)
                theirs = llama_cpp_tokens(Path(d) / "tok", args.vocab, Path(d), texts)
            same_files = sum(a == b for a, b in zip(ids, theirs, strict=True))
            diff = sum(
                max(len(a), len(b)) - sum((Counter(a) & Counter(b)).values())
                for a, b in zip(ids, theirs, strict=True)
            )
            agree = (
                f"{same_files}/{len(texts)} files identical, {diff / sum(map(len, ids)):.2%} tokens differ"
            )
        total = sum(len(t.encode()) for t in texts) / sum(map(len, ids))
        median = statistics.median(len(t.encode()) / max(1, len(i)) for t, i in zip(texts, ids, strict=True))
        rows[name] = (per_lang, total, median, agree, seconds)
        console.print(f"{name}: {total:.3f} bytes/token, trained in {seconds:.0f} s; llama.cpp: {agree}")
    table = Table(
        title=f"Bytes per token on held-out files, BPE of {args.vocab:,} ids trained on {args.train_mb} MB"
    )
    table.add_column("pre-tokenizer")
    for lang in langs:
        table.add_column(f"{lang} ({len(held[lang])})", justify="right")
    table.add_column("all", justify="right")
    table.add_column("median file", justify="right")
    table.add_column("llama.cpp agreement")
    for name, (per_lang, total, median, agree, _) in rows.items():
        table.add_row(
            name, *(f"{per_lang[lang]:.2f}" for lang in langs), f"{total:.3f}", f"{median:.3f}", agree
        )
    console.print(table)


if __name__ == "__main__":
    main()
