"""Checkpoints: model and optimizer through torch.distributed.checkpoint (sharded, and resharded on
load, so a run resumes on another world size), the data position of every stream shard, and each
rank's RNG. With frozen parameters (LoRA) only the trained ones are saved: the frozen base is the
run's `init_from`, read again on resume. A checkpoint is written under `step-N.tmp` and renamed when
complete, so a crash mid-write never leaves a half-written latest checkpoint; the last `keep` are kept.

A checkpoint proves itself: meta.json lists every file with its size and xxh3-128 (each rank hashes
the files it wrote). xxh3 rather than SHA-256: it catches the faults met here (a truncated copy, a
flipped bit) and is 3x faster (1.7 vs 0.56 GB/s per core, file reads included, measured on this
project's CPU; docs/reliability.md), which matters when `train verify` reads a 7B run's 89 GB of
model and AdamW state. Resume takes the newest checkpoint that verifies and sets aside the others."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import xxhash
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from codemill.errors import UserError, writing
from codemill.train.dist import Dist, all_reduce, barrier

NAME = re.compile(r"step-\d{8}")
HASH = "xxh3_128"


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


def complete(state_dir: Path) -> list[Path]:
    """The finished checkpoints, oldest first (not `.tmp` ones being written, not `.bad` ones set aside)."""
    return sorted(p for p in state_dir.glob("step-*") if p.is_dir() and NAME.fullmatch(p.name))


def latest(state_dir: Path) -> Path | None:
    done = complete(state_dir)
    return done[-1] if done else None


def digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def _gather(obj, d: Dist) -> list:
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def finite(model, d: Dist) -> bool:
    """Whether every weight is finite on every rank (one all-reduce)."""
    bad = torch.zeros((), device=d.device)
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        bad += (~torch.isfinite(local.detach())).any()
    return all_reduce(bad, d).item() == 0


def _bytes(state) -> int:
    if isinstance(state, dict):
        return sum(_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_bytes(v) for v in state)
    if isinstance(state, torch.Tensor):
        local = state.to_local() if hasattr(state, "to_local") else state
        return local.numel() * local.element_size()
    return 0


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
    need = _bytes([model_sd, optim_sd]) * d.world
    try:
        with writing(f"checkpoint step {step}", tmp, need):
            with _single_process_quiet():
                dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
            mine = [tmp / f"data-shard-{shard}.json" for shard in data]
            for f, state in zip(mine, data.values(), strict=True):
                f.write_text(json.dumps(state))
            rng = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state()
            torch.save(rng, tmp / f"rng-rank-{d.rank}.pt")
            mine += [tmp / f"rng-rank-{d.rank}.pt", *tmp.glob(f"__{d.rank}_*.distcp")]
            if d.main:
                mine.append(tmp / ".metadata")
            files = {f.name: {"size": f.stat().st_size, HASH: digest(f)} for f in mine}
            files = {k: v for part in _gather(files, d) for k, v in part.items()}
            if d.main:
                info = {**meta, "step": step, "world": d.world, "files": dict(sorted(files.items()))}
                (tmp / "meta.json").write_text(json.dumps(info, indent=2))
                _fsync_dir(tmp)
    except BaseException:
        if d.main:
            shutil.rmtree(
                tmp, ignore_errors=True
            )  # the space it took is given back; the previous checkpoint stays
        raise
    barrier(d)
    if d.main:
        os.replace(tmp, final)
        _fsync_dir(state_dir)
        for old in complete(state_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def verify(path: Path, d: Dist | None = None) -> list[str]:
    """What is wrong with a checkpoint (empty: it is whole). Its files are shared out over the ranks,
    so verifying a large run costs each rank its share; every rank returns the same list."""
    d = d or Dist()
    problems: list[str] = []
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        return ["meta.json is missing"]
    except (OSError, ValueError) as e:
        return [f"meta.json is unreadable ({type(e).__name__}: {e})"]
    # a checkpoint written before checksums were recorded: only whether DCP finished it can be checked
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict):
        return [] if (path / ".metadata").is_file() else [".metadata is missing"]
    for i, (name, want) in enumerate(sorted(files.items())):
        if i % d.world != d.rank:
            continue
        f = path / name
        if not f.is_file():
            problems.append(f"{name} is missing")
        elif (size := f.stat().st_size) != want["size"]:
            problems.append(f"{name} has {size:,} bytes, not {want['size']:,}")
        elif digest(f) != want[HASH]:
            problems.append(f"{name} does not match its checksum")
    return [p for part in _gather(problems, d) for p in part]


def newest_whole(state_dir: Path, d: Dist, say) -> Path | None:
    """The newest checkpoint that verifies. Newer ones that do not are renamed `step-N.bad` (kept for
    inspection, out of the way of the run's next save of that step) and reported through `say`."""
    for path in reversed(complete(state_dir)):
        problems = verify(path, d)
        if not problems:
            return path
        bad = path.with_name(path.name + ".bad")
        say(f"checkpoint {path} fails verification ({'; '.join(problems)}): skipped, kept as {bad.name}")
        barrier(d)
        if d.main:
            shutil.rmtree(bad, ignore_errors=True)
            os.replace(path, bad)
        barrier(d)
    return None


def load(path: Path, model, optim, shards: list[int], d: Dist) -> tuple[dict, dict[int, dict]]:
    """Restore model, optimizer and this rank's RNG; return the meta and this rank's data states. The
    caller has verified the checkpoint (`verify`, `newest_whole`)."""
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
        state = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
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
