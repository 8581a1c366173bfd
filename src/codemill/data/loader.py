"""The trainer's reader: the windows of its stream shards through a `torch.utils.data.DataLoader`,
packed ahead of the step in worker processes (or in the training process with 0 workers).

Each item is a `Block`: a step's windows from one shard and that shard's state right after them.
Worker w of W streams the shards shards[w::W] in turn, and the DataLoader takes items from its
workers round robin, so with W dividing the shard count the items arrive shard by shard, step by step:
the global batch is the one the streams give in-process, whatever W. The reader keeps the state of
the last block the trainer took per shard, not of what the workers have packed ahead: a checkpoint
records what was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from codemill.data.config import DataConfig
from codemill.data.stream import TrainingStream


@dataclass
class Block:
    """`tokens` int32 and `objective` uint8 [windows, seq_len + 1] of one shard, and its state after them."""

    shard: int
    tokens: np.ndarray
    objective: np.ndarray
    state: dict


class ShardBlocks(IterableDataset):
    """Blocks of `per_shard` windows from each shard in turn, forever (a worker: its share of them).

    The streams are built where they are read, from the shards' states: a stream holds parsed trees,
    which do not pickle, and workers are spawned, not forked, because a fork of a process whose OpenMP
    pool is running (scikit-learn's k-means in Algorithm 1, torch) hangs in the child's first k-means."""

    def __init__(self, corpus: str | Path, tokenizer, cfg: DataConfig, world: int, per_shard: int,
                 states: dict[int, dict]):  # fmt: skip
        super().__init__()
        self.corpus, self.tokenizer, self.cfg, self.world = corpus, tokenizer, cfg, world
        self.per_shard, self.states = per_shard, states

    def stream(self, shard: int) -> TrainingStream:
        stream = TrainingStream(self.corpus, self.tokenizer, self.cfg, rank=shard, world=self.world)
        stream.load_state_dict(self.states[shard])
        return stream

    def __iter__(self):
        info = get_worker_info()
        shards = list(self.states)[info.id :: info.num_workers] if info else list(self.states)
        streams = {s: self.stream(s) for s in shards}
        while True:
            for s in shards:
                windows = [next(streams[s]) for _ in range(self.per_shard)]
                yield Block(
                    s,
                    np.stack([w["tokens"] for w in windows]),
                    np.stack([w["objective"] for w in windows]),
                    streams[s].state_dict(),
                )


def _as_is(block: Block) -> Block:
    return block


def worker_count(wanted: int, shards: int) -> int:
    """The most workers, up to `wanted`, that divide the shards evenly (each streams whole shards)."""
    return max(w for w in range(min(wanted, shards) + 1) if w == 0 or shards % w == 0)


class WindowLoader:
    """A rank's step batches: `per_shard` windows of each of its `shards` of `world`, in shard order.
    `states`: the shards' states to start from (a checkpoint's); `workers`: DataLoader processes."""

    def __init__(
        self,
        corpus: str | Path,
        tokenizer,
        cfg: DataConfig,
        shards: list[int],
        world: int,
        per_shard: int,
        workers: int,
        states: dict[int, dict] | None = None,
    ):
        states = dict(states or {})
        for s in shards:
            if s not in states:  # a new run: each shard's state before its first window
                states[s] = TrainingStream(corpus, tokenizer, cfg, rank=s, world=world).state_dict()
        self.shards = shards
        self.consumed = {s: states[s] for s in shards}
        n = worker_count(workers, len(shards))
        loader = DataLoader(
            ShardBlocks(corpus, tokenizer, cfg, world, per_shard, dict(self.consumed)),
            batch_size=None,
            num_workers=n,
            collate_fn=_as_is,
            prefetch_factor=2 if n else None,
            multiprocessing_context="spawn" if n else None,
            generator=torch.Generator(),  # its seed draw leaves the global generator (dropout) alone
        )
        self._blocks = iter(loader)

    def next_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's windows: tokens and objective codes, int64 [shards x per_shard, seq_len + 1]."""
        blocks = [next(self._blocks) for _ in self.shards]
        if [b.shard for b in blocks] != self.shards:
            raise RuntimeError(
                f"loader blocks came from shards {[b.shard for b in blocks]}, not {self.shards}"
            )
        for b in blocks:
            self.consumed[b.shard] = b.state
        tokens = torch.from_numpy(np.concatenate([b.tokens for b in blocks]).astype(np.int64))
        codes = torch.from_numpy(np.concatenate([b.objective for b in blocks]).astype(np.int64))
        return tokens, codes

    def state_dict(self) -> dict[int, dict]:
        """Per shard, the state after the last windows the trainer took."""
        return dict(self.consumed)

    def close(self) -> None:
        """Stops the workers (the DataLoader iterator shuts them down when dropped)."""
        self._blocks = None
