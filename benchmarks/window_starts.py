"""What non-overlapping windows cost: the first token of a window is never a target. Counts where
windows start (inside a document's content, on a special token, on padding) and the share of content
tokens that are never a target.

    .venv/bin/python benchmarks/window_starts.py runs/demo/corpus runs/demo/tokenizer [--windows 1000]
"""

from __future__ import annotations

import argparse

from codemill.data.config import DataConfig
from codemill.data.stream import TrainingStream
from codemill.data.tokenizer import load_tokenizer
from codemill.formats import get_format


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("tokenizer")
    ap.add_argument("--windows", type=int, default=1000)
    ap.add_argument("--seq-lens", default="512,2048")
    args = ap.parse_args()
    tok = load_tokenizer(args.tokenizer)
    specials = {tok.token_id(t) for t in get_format("codemill").specials}
    for seq_len in map(int, args.seq_lens.split(",")):
        starts = {"content": 0, "special": 0, "padding": 0}
        stream = TrainingStream(args.corpus, tok, DataConfig(seq_len=seq_len))
        for _, w in zip(range(args.windows), stream, strict=False):
            token, code = int(w["tokens"][0]), int(w["objective"][0])
            starts["padding" if code == 0 else "special" if token in specials else "content"] += 1
        n = sum(starts.values())
        print(f"seq_len {seq_len}: {n} windows start on {starts}; content tokens never a target: "
              f"{starts['content'] / (n * seq_len):.3%}")  # fmt: skip


if __name__ == "__main__":
    main()
