"""One code path for one CPU, one GPU and many nodes: torchrun sets the environment, FSDP2 shards
each block and then the root (torchtitan's recipe); a single process runs the same code unsharded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """From torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a single process on the best device."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local, torch.device(f"cuda:{local}" if cuda else "cpu"))


def shard(model: nn.Module, d: Dist, bf16: bool = False) -> nn.Module:
    """FSDP2 `fully_shard` per block, then the root; a CPU mesh is built explicitly (pytorch #132471).
    `bf16`: parameters gathered and computed in bf16, gradients reduced in fp32 into the fp32 sharded
    parameters the optimizer steps (torchtitan's mixed-precision policy)."""
    if d.world == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(d.device.type, (d.world,))
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for block in model.model.layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def all_reduce(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t)
    return t


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
