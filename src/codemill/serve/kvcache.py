"""The serving engine's keys and values, and the two ways its forwards read and write them.

The model (model/llama.py) knows nothing of slots, positions or rows: its forward takes a cache object
that gives it the RoPE tables of the new tokens and does their attention (`rope`, `attend`,
`advance`), as nanochat's engine hands its model a KV cache. Here are the engine's two:
- `RowCache`: one slot's row continued by a chunk of prompt (prefill: causal over the chunk, attending
  to the prefix the row holds);
- `StepCache`: one token per batch row for every slot at once (a decode step), batch row b at its own
  position of its own cache row, attending to exactly its first lengths[b] positions, so its numbers
  never depend on the other rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from codemill.model.llama import ModelConfig, rope_tables


@dataclass
class KVCache:
    """Keys and values [slots, kv_heads, capacity, head_dim] per layer, preallocated, and the RoPE
    tables of every position (built once, sliced per forward)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [capacity, head_dim]

    @classmethod
    def empty(cls, cfg: ModelConfig, capacity: int, device, dtype, slots: int = 1) -> KVCache:
        shape = (slots, cfg.num_kv_heads, capacity, cfg.head_dim)
        new = lambda: [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]  # noqa: E731
        return cls(new(), new(), rope_tables(cfg, torch.arange(capacity, device=device)))

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def row(self, i: int, length: int) -> RowCache:
        """Slot i's row continued after its first `length` positions (a prompt's chunk)."""
        return RowCache(self, i, length)

    def step(self, pos: torch.Tensor, lengths: list[int], rows: list[int]) -> StepCache:
        """A decode step: batch row b writes at pos[b] of cache row rows[b] and attends to its first
        lengths[b] positions (0: an idle row, left at 0)."""
        return StepCache(self, pos, lengths, rows)


@dataclass
class RowCache:
    cache: KVCache
    slot: int
    length: int

    def rope(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(x[self.length : self.length + t] for x in self.cache.rope)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The new tokens attend to the row's prefix and causally among themselves."""
        t, start, i = q.shape[2], self.length, self.slot
        ck, cv = self.cache.k[layer][i : i + 1], self.cache.v[layer][i : i + 1]
        ck[:, :, start : start + t] = k
        cv[:, :, start : start + t] = v
        k, v = ck[:, :, : start + t], cv[:, :, : start + t]
        mask = None
        if t > 1:
            mask = torch.ones(t, start + t, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])

    def advance(self, t: int) -> None:
        self.length += t


@dataclass
class StepCache:
    cache: KVCache
    pos: torch.Tensor  # [B]
    lengths: list[int]
    rows: list[int]

    def rope(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.pos.shape[0]
        return tuple(x.index_select(0, self.pos).view(b, 1, 1, -1) for x in self.cache.rope)

    @torch.compiler.disable  # traced, each row's length and cache row would each be a guard
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _attend_rows(
            q, k, v, self.cache.k[layer], self.cache.v[layer], self.pos, self.lengths, self.rows
        )

    def advance(self, t: int) -> None:
        """The engine advances each row's length itself (drafts it keeps or drops)."""


def _attend_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ck: torch.Tensor,
    cv: torch.Tensor,
    pos: torch.Tensor,
    lengths: list[int],
    rows: list[int],
) -> torch.Tensor:
    """One new token per batch row: every key and value goes into cache row rows[b] at pos[b] first
    (several batch rows may feed consecutive positions of one cache row: drafts see each other's
    keys), then batch row b attends to the first lengths[b] positions of that cache row."""
    b, gqa = q.shape[0], q.shape[1] != k.shape[1]
    if b == 1:  # a lone row (never idle)
        ck.index_copy_(2, pos, k)
        cv.index_copy_(2, pos, v)
        n = lengths[0]
        return F.scaled_dot_product_attention(q, ck[:, :, :n], cv[:, :, :n], enable_gqa=gqa)
    at = torch.tensor(rows, device=q.device)
    ck[at, :, pos] = k[:, :, 0]
    cv[at, :, pos] = v[:, :, 0]
    y = q.new_zeros(q.shape)
    for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
        if n:
            y[i : i + 1] = F.scaled_dot_product_attention(
                q[i : i + 1], ck[r : r + 1, :, :n], cv[r : r + 1, :, :n], enable_gqa=gqa
            )
    return y
