"""One code path for one CPU, one GPU and many nodes: torchrun sets the environment, FSDP2 shards
each block and then the root (torchtitan's recipe); a single process runs the same code unsharded."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import MutableMapping
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
    """From torchrun's RANK / WORLD_SIZE / LOCAL_RANK, from a Slurm step's tasks (`srun` without
    torchrun), or a single process on the best device."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        slurm_env()
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local, torch.device(f"cuda:{local}" if cuda else "cpu"))


def slurm_env(env: MutableMapping[str, str] = os.environ) -> None:
    """torchrun's variables from those `srun` gives each task of a step, when it started more than
    one: rank and world from the step (the batch script itself has no SLURM_STEP_NUM_TASKS), the
    rendezvous on the step's first node at a port derived from the job id (unless MASTER_* are set)."""
    world = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if world < 2 or "SLURM_PROCID" not in env:
        return
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], str(world)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
        try:
            hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True)
            env["MASTER_ADDR"] = hosts.stdout.split()[0]
        except (OSError, IndexError):  # no scontrol: the list's first name, `node[3-4,7]` -> node3
            first = re.match(r"([^,\[]*)(?:\[(\d+))?", nodes)
            env["MASTER_ADDR"] = first.group(1) + (first.group(2) or "")
    env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 10000))


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
