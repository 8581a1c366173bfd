"""Replay a run's training stream: which repositories and objectives each step held, and how its
trained model scores those windows, so a loss curve can be read as content or as optimisation.

    python benchmarks/demo_stream.py runs/demo --shards 1 --score 150,155,195,200

It rebuilds the streams `codemill train` drew from (the run's `data:` settings, `--shards` streams,
global_batch 8 split evenly) and prints, every `--every` steps, the repositories of the step's windows
and the share of loss tokens per objective; with `--score`, the final model's loss on the windows of
those steps and their share of non-ASCII characters (docs/results.md, "The demo's stream").
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from codemill.data.config import DataConfig
from codemill.data.objectives import Objective
from codemill.data.stream import TrainingStream
from codemill.data.tokenizer import load_tokenizer
from codemill.model.hf import import_hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a `codemill run` directory (corpus/, tokenizer/, train/)")
    ap.add_argument("--shards", type=int, default=0, help="streams per step (0: the run's data_shards)")
    ap.add_argument("--steps", type=int, default=0, help="steps to replay (0: the run's max_steps)")
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--score", default="", help="comma-separated steps whose windows the final model scores")
    args = ap.parse_args()

    cfg = json.loads((args.run / "train" / "run.json").read_text())
    batch, shards = cfg["train"]["global_batch"], args.shards or cfg["train"]["data_shards"] or 1
    steps = args.steps or cfg["train"]["max_steps"]
    tok = load_tokenizer(args.run / "tokenizer")
    dcfg = DataConfig.from_dict(cfg["data"])
    streams = [TrainingStream(args.run / "corpus", tok, dcfg, rank=s, world=shards) for s in range(shards)]
    score = {int(s) for s in args.score.split(",") if s}
    model = import_hf(args.run / "train" / "final").eval() if score else None
    seen: set[str] = set()
    for step in range(1, steps + 1):
        windows, repos = [], Counter()
        for st in streams:
            for _ in range(batch // shards):
                windows.append(next(st))
                repos[st.sources["code"].repos[st.cursor.current.unit]] += 1
        seen |= set(repos)
        if step % args.every == 0:
            codes = np.bincount(
                np.concatenate([w["objective"][1:] for w in windows]), minlength=len(Objective)
            )
            trained = max(codes.sum() - codes[Objective.PADDING], 1)
            mix = " ".join(f"{o.label} {codes[o] / trained:.0%}" for o in Objective if o != Objective.PADDING)
            print(f"step {step}: {len(seen)} repositories so far; {mix}; {dict(repos)}")
        if step in score:
            tokens = torch.from_numpy(np.stack([w["tokens"] for w in windows]).astype(np.int64))
            with torch.no_grad():
                logits = model(tokens[:, :-1])
            every = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none"
            )
            trained = torch.from_numpy(np.stack([w["objective"][1:] for w in windows])).flatten() > 0
            loss = every[trained].mean()  # the positions training takes a loss on (padding has none)
            text = "".join(tok.decode(w["tokens"].tolist()) for w in windows)
            share = sum(ord(c) > 127 for c in text) / len(text)
            print(
                f"step {step}: the final model's loss on its windows {loss.item():.2f}, non-ASCII {share:.1%}"
            )


if __name__ == "__main__":
    main()
