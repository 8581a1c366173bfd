"""Prompts kept in host memory beyond the slots (llama-server's `--cache-ram`).

With more editors than slots, each new request takes a slot another editor's file was cached in, and
every keystroke after that evaluates its whole prompt again (8 typists on 4 slots: four times as many
tokens evaluated as reused). Before a slot's prompt is overwritten, its keys and values are copied
here; a request whose prompt shares a longer prefix with a kept one than with the slot's copies it
back, which costs a memory copy instead of a prefill, and the numbers are the ones computed before, so
answers do not change. Least recently used prompts go first when the budget is full.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import torch

from codemill.serve.kvcache import KVCache


@dataclass(eq=False)
class Kept:
    ids: list[int]
    k: list[torch.Tensor]  # per layer [kv_heads, len(ids), head_dim], on the host
    v: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.k, *self.v))


class PromptCache:
    def __init__(self, limit_bytes: int, max_prompts: int = 64):
        """At most `limit_bytes` of keys and values, and `max_prompts` prompts (each request compares
        its ids with every kept prompt)."""
        self.limit, self.max_prompts = limit_bytes, max_prompts
        self.kept: OrderedDict[int, Kept] = OrderedDict()  # by id(), least recently used first
        self.nbytes = 0

    def best(self, ids: list[int]) -> tuple[int, Kept | None]:
        """The kept prompt sharing the longest prefix with `ids`, and how long that prefix is."""
        n, found = 0, None
        for kept in self.kept.values():
            if (m := common_prefix(kept.ids, ids)) > n:
                n, found = m, kept
        return n, found

    def save(self, ids: list[int], cache: KVCache, row: int) -> None:
        """Keep the first len(ids) positions of cache row `row`, unless a kept prompt starts with them;
        kept prompts that are a prefix of them go."""
        if not ids or any(common_prefix(k.ids, ids) == len(ids) for k in self.kept.values()):
            return
        n = len(ids)
        kept = Kept(list(ids), [t[row, :, :n].to("cpu", copy=True) for t in cache.k],
                    [t[row, :, :n].to("cpu", copy=True) for t in cache.v])  # fmt: skip
        if kept.nbytes > self.limit:
            return
        for old in [k for k in self.kept.values() if common_prefix(k.ids, ids) == len(k.ids)]:
            self.drop(old)
        while self.nbytes + kept.nbytes > self.limit or len(self.kept) >= self.max_prompts:
            self.drop(next(iter(self.kept.values())))
        self.kept[id(kept)] = kept
        self.nbytes += kept.nbytes

    @staticmethod
    def restore(kept: Kept, n: int, cache: KVCache, row: int) -> list[int]:
        """Copy the first n positions of a kept prompt into cache row `row`; the ids the row then holds."""
        for dst, src in ((cache.k, kept.k), (cache.v, kept.v)):
            for t, s in zip(dst, src, strict=True):
                t[row, :, :n].copy_(s[:, :n])
        return kept.ids[:n]

    def clear(self) -> None:
        self.kept.clear()
        self.nbytes = 0

    def drop(self, kept: Kept) -> None:
        del self.kept[id(kept)]
        self.nbytes -= kept.nbytes


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids two sequences share."""
    return len(os.path.commonprefix([a, b]))  # noqa: RUF071 (any two sequences, here token ids)
