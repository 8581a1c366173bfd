"""Checkpoints: model and optimizer through torch.distributed.checkpoint (sharded, and resharded on
load, so a run resumes on another world size), the data position of every stream shard, and each
rank's RNG. With frozen parameters (LoRA) only the trained ones are saved: the frozen base is the
run's `init_from`, read again on resume. A checkpoint is written under `step-N.tmp` and renamed when complete, so a crash mid-write
never leaves a corrupt latest checkpoint; the last `keep` are kept."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from codemill.errors import UserError
from codemill.train.dist import Dist, barrier


@contextlib.contextmanager
def _single_process_quiet():
    """One process saves and loads without a process group, as intended; DCP warns about it every
    time. The filter lives only around our calls, not process-wide."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _options(model) -> StateDictOptions:
    """Frozen parameters left out of the state (and so not expected back on load)."""
    frozen = any(not p.requires_grad for p in model.parameters())
    return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen)


def latest(state_dir: Path) -> Path | None:
    done = sorted(p for p in state_dir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def save(
    state_dir: Path, step: int, model, optim, data: dict[int, dict], meta: dict, d: Dist, keep: int
) -> Path:
    final = state_dir / f"step-{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(d)
    model_sd, optim_sd = get_state_dict(model, optim, options=_options(model))
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    for shard, state in data.items():
        (tmp / f"data-shard-{shard}.json").write_text(json.dumps(state))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / f"rng-rank-{d.rank}.pt")
    barrier(d)
    if d.main:
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step, "world": d.world}, indent=2))
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(state_dir)
        for old in sorted(p for p in state_dir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))[
            :-keep
        ]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def load(path: Path, model, optim, shards: list[int], d: Dist) -> tuple[dict, dict[int, dict]]:
    """Restore model, optimizer and this rank's RNG; return the meta and this rank's data states."""
    options = _options(model)
    model_sd, optim_sd = get_state_dict(model, optim, options=options)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=path)
    set_state_dict(
        model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options
    )
    meta = json.loads((path / "meta.json").read_text())
    rng_file = path / f"rng-rank-{d.rank}.pt"
    if meta["world"] == d.world and rng_file.exists():  # another world size: RNG streams start afresh
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    data = {}
    for s in shards:
        f = path / f"data-shard-{s}.json"
        if not f.exists():
            raise UserError(f"{path} has no data state for shard {s}: was data_shards changed?")
        data[s] = json.loads(f.read_text())
    return meta, data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
