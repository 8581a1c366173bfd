"""Faults a long run meets, injected for real: a diverging run (absurd learning rate) on one and two
processes, a planted loss spike, damaged checkpoints, and full disks (a small tmpfs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_train import losses, run, train_cmd

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def fails(cmd, torchrun: bool = False) -> subprocess.CompletedProcess:
    """A run that ends with codemill's one-line error: exit 2 (torchrun's launcher then exits 1 and
    prints its own report of the child's exit code, which is not ours to shape)."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    ours = "exitcode  : 2" in r.stderr if torchrun else r.returncode == 2 and "Traceback" not in r.stderr
    assert ours and "error:" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def records(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def model_state(ckpt) -> dict[str, torch.Tensor]:
    """A checkpoint's model and optimizer tensors, read with DCP as a resume reads them."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(ckpt, ckpt.parent / f"{ckpt.name}.pt")
    state = torch.load(ckpt.parent / f"{ckpt.name}.pt", weights_only=False)
    (ckpt.parent / f"{ckpt.name}.pt").unlink()
    flat = {}

    def walk(prefix, x):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(x, torch.Tensor):
            flat[prefix] = x

    walk("", state)
    return flat


@pytest.mark.parametrize("procs", [1, 2])
def test_a_diverging_run_skips_non_finite_steps_then_stops_naming_the_last_good_checkpoint(
    code_corpus, bpe_dir, tmp_path, procs
):
    """lr 1e30: step 1's update is finite but huge, every later loss is not. Those steps are skipped
    (weights and AdamW state as step 1 left them), counted, and the third in a row stops the run."""
    out = tmp_path / "run"
    extra = ["--set", "max_steps=20", "--set", "lr=1e30", "--set", "max_bad_steps=3", "--set", "ckpt_every=1",
             "--set", "keep_last=5", "--set", "data_shards=2"]  # fmt: skip
    r = fails(train_cmd(code_corpus, bpe_dir, out, *extra, torchrun=procs - 1 and procs), procs > 1)
    said = " ".join(r.stdout.split())
    assert "training stopped at step 4: 3 steps in a row were skipped (non-finite" in said, said
    assert "step-00000003" in said  # the last checkpoint, named
    rows = records(out)
    assert [x["skipped_steps"] for x in rows] == [0, 1, 2, 3] and rows[0]["loss"] is not None
    assert all(x["loss"] is None and x["grad_norm"] is None for x in rows[1:])
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("nonfinite", 2), ("nonfinite", 3), ("nonfinite", 4)]
    state = out / "state"
    assert sorted(p.name for p in state.iterdir()) == [f"step-0000000{i}" for i in (1, 2, 3)]
    first, last = model_state(state / "step-00000001"), model_state(state / "step-00000003")
    assert first.keys() == last.keys() and any(".exp_avg_sq" in k for k in first)
    for k in first:  # no update, no optimizer state touched by the skipped steps
        assert torch.equal(first[k], last[k]), k
        assert torch.isfinite(first[k]).all(), k
    assert not (out / "final").exists()


def verify(out) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "codemill.cli", "train", "verify", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
    )


def test_a_damaged_checkpoint_is_found_and_resume_takes_the_newest_that_verifies(
    code_corpus, bpe_dir, tmp_path
):
    """A byte flipped in the latest checkpoint, the one before it cut short: `train verify` names both
    and exits 1; the resume says which it skipped and why, goes on from the one left whole, and takes
    the same steps again."""
    out = tmp_path / "run"
    extra = ["--set", "ckpt_every=1", "--set", "keep_last=3"]
    run(train_cmd(code_corpus, bpe_dir, out, "--set", "max_steps=3", *extra))
    first = losses(out)
    r = verify(out)
    assert r.returncode == 0 and r.stdout.count(" ok ") == 3, r.stdout
    state = out / "state"
    meta = json.loads((state / "step-00000003" / "meta.json").read_text())
    assert {"size", "xxh3_128"} <= meta["files"]["__0_0.distcp"].keys() and ".metadata" in meta["files"]
    flipped = state / "step-00000003" / "__0_0.distcp"
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    flipped.write_bytes(bytes(raw))
    cut = state / "step-00000002" / "__0_0.distcp"
    os.truncate(cut, cut.stat().st_size - 100)
    r = verify(out)
    said = " ".join(r.stdout.split())
    assert (
        r.returncode == 1 and "does not match its checksum" in said and "2 of 3 checkpoints fail" in said
    ), said
    r = run(train_cmd(code_corpus, bpe_dir, out, "--set", "max_steps=4", *extra))
    said = " ".join(r.stdout.split())
    assert "step-00000003 fails verification (__0_0.distcp does not match its checksum)" in said, said
    assert (
        "step-00000002 fails verification (__0_0.distcp has" in said and "kept as step-00000002.bad" in said
    )
    again = losses(out)
    assert again[:3] == first and len(again) == 4  # steps 2 and 3 retaken from step 1, bitwise
    assert verify(out).returncode == 1  # the damaged ones are kept aside, and still reported
    names = ["step-00000002", "step-00000002.bad", "step-00000003", "step-00000003.bad", "step-00000004"]
    assert sorted(p.name for p in state.iterdir()) == names
