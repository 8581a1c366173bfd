"""Linear layers with oneDNN-packed weights, for decoding on a CPU.

Decoding multiplies each weight matrix by one row per sequence. PyTorch's CPU `linear` calls MKL's
sgemm, which runs a generic path on CPUs it does not tune for (AMD EPYC here) and reads the weights from
memory at about 10 GB/s: the 8192 x 256 output head alone took 0.8 ms a token with its cache cold.
oneDNN with the weight reordered once into its blocked layout takes 0.27 ms with 1 row and 0.22 ms with
4 (docs/benchmarks.md), and the same row of a fixed row count gives the same numbers whatever the other
rows hold, which serve's batch invariance needs. This is what inductor's weight packing does for
bf16; it picks MKL's packing for fp32, which measured slower.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """An inference-only `nn.Linear` whose weight is held in oneDNN's layout for `rows` rows (a hint:
    any number of rows works)."""

    def __init__(self, linear: nn.Linear, rows: int):
        super().__init__()
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        self.bias = None if linear.bias is None else linear.bias.detach()

    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, x.shape[-1]), self.packed, self.bias, "none", [], ""
        )
        return y.view(*x.shape[:-1], self.out_features)


# oneDNN costs about 15 us a call against MKL's 4-6 us on small hot matrices, and wins from about this
# many weights x rows on (docs/benchmarks.md): 688 x 256 loses at 1 row and wins at 4, the head wins at 1
PACK_FROM = 2**19


ONEDNN_CACHE = 64  # compiled oneDNN primitives kept, and ideep's entries for them (1,024 each by default)


def bound_onednn_caches(entries: int = ONEDNN_CACHE) -> None:
    """Bound oneDNN's primitive cache and ideep's: the packed linears (model/packed.py) get a
    primitive for each weight and row count, and each prompt chunk's length is a new row count. At
    the default 1,024 entries each, the demo model's heap grew 2.3 MB a new length (226 MB over
    lengths 1-100) and a soaked server's by hundreds of MB; at 64, not at all once full, and the
    decode step's few shapes stay cached. Both libraries read these when they make their first
    primitive: called before the model loads. A value already in the environment is kept."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(entries))
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(entries))  # ideep's


def pack_linears(model: nn.Module, rows: int, pack_from: int | None = None) -> int:
    """Replace each `nn.Linear` of an inference model on the CPU that is large enough for the `rows`
    it is called with (weights x rows >= `pack_from`, default PACK_FROM) by a `PackedLinear`; how many."""
    bound_onednn_caches()
    pack_from = PACK_FROM if pack_from is None else pack_from
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear and child.weight.numel() * rows >= pack_from]  # fmt: skip
    for parent, name, child in found:
        setattr(parent, name, PackedLinear(child, rows))
    return len(found)
