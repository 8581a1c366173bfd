"""The tokenizer stage (`codemill tokenizer train`, and `codemill run`'s): a byte-level BPE trained
on the start of a corpus, with the format's special tokens reserved."""

from __future__ import annotations

import time
from pathlib import Path

from codemill.data.tokenizer import DEFAULT_PRETOKENIZER
from codemill.errors import writable
from codemill.formats import DEFAULT_FORMAT, Format, get_format


def train_tokenizer(corpus: Path, out: Path, *, vocab_size: int, max_bytes: int, fmt: Format,
                    pretokenizer: str = DEFAULT_PRETOKENIZER):  # fmt: skip
    """Train on at most `max_bytes` of the corpus's text and write tokenizer.json and its config to
    `out`; return the tokenizer."""
    from codemill.data.tokenizer import save_tokenizer, train_bpe, training_texts

    texts, n = training_texts(corpus, max_bytes)
    tok = train_bpe(texts, vocab_size, fmt, show_progress=True, pretokenizer=pretokenizer, length=n)
    save_tokenizer(tok, out, fmt)
    return tok


def tokenizer_command(corpus: Path, out: Path, *, vocab_size: int, max_bytes: int, format: str = DEFAULT_FORMAT,
                      pretokenizer: str = DEFAULT_PRETOKENIZER, console) -> None:  # fmt: skip
    """`codemill tokenizer train`: an unknown format or unwritable `out` said first, then the time taken."""
    fmt = get_format(format)
    writable(out)
    t0 = time.perf_counter()
    tok = train_tokenizer(
        corpus, out, vocab_size=vocab_size, max_bytes=max_bytes, fmt=fmt, pretokenizer=pretokenizer
    )
    console.print(
        f"tokenizer with {tok.get_vocab_size():,} ids trained in {time.perf_counter() - t0:.1f} s; "
        f"written to [bold]{out}[/bold]"
    )
