"""Faults a long run meets, injected for real: a diverging run (absurd learning rate) on one and two
processes, a planted loss spike, damaged checkpoints, and full disks (a small tmpfs)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import BASE, losses, train_cmd

from codemill.errors import UserError

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


def verify(out):
    """`codemill train verify OUT`, in this process (exit code, output)."""
    from typer.testing import CliRunner

    from codemill.cli import app

    return CliRunner().invoke(app, ["train", "verify", str(out)], terminal_width=200)


def train_here(corpus, tokenizer, out, *sets: str) -> str:
    """`codemill train` in this process (the same call the command makes, without its start-up: the
    runs below are many and short); `sets` as on the command line. Returns what it said."""
    import io

    from rich.console import Console

    from codemill.flow.settings import train_settings
    from codemill.train.loop import train

    said = io.StringIO()
    dcfg, tcfg = train_settings(None, [*BASE[1::2], *sets[1::2]])
    threads = torch.get_num_threads()
    try:
        train(corpus, tokenizer, out, dcfg, tcfg, Console(file=said, width=200))
    finally:
        torch.set_num_threads(threads)  # train.threads=1 is for the run, not for the tests after it
    return " ".join(said.getvalue().split())


# three steps with a checkpoint after each: the undisturbed run that faulted runs are held to
SAVES = ["--set", "max_steps=3", "--set", "ckpt_every=1", "--set", "keep_last=3"]


@pytest.fixture(scope="module")
def straight(code_corpus, bpe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    train_here(code_corpus, bpe_dir, out, *SAVES)
    return out


def same_run(a, b) -> None:
    """The same losses and final weights, bitwise (CPU)."""
    assert losses(a) == losses(b)
    wa, wb = (load_file(p / "final" / "model.safetensors") for p in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_damaged_checkpoint_is_found_and_resume_takes_the_newest_that_verifies(
    code_corpus, bpe_dir, tmp_path, straight
):
    """A byte flipped in the latest checkpoint, the one before it cut short: `train verify` names both
    and exits 1; the resume says which it skipped and why, goes on from the one left whole, and ends
    as the undisturbed run did."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    r = verify(out)
    assert r.exit_code == 0 and r.output.count(" ok ") == 3, r.output
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
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "does not match its checksum" in said and "2 of 3 checkpoints fail" in said, (
        said
    )
    shutil.rmtree(out / "final")
    said = train_here(code_corpus, bpe_dir, out, *SAVES)
    assert "step-00000003 fails verification (__0_0.distcp does not match its checksum)" in said, said
    assert (
        "step-00000002 fails verification (__0_0.distcp has" in said and "kept as step-00000002.bad" in said
    )
    same_run(out, straight)  # steps 2 and 3 retaken from step 1
    assert verify(out).exit_code == 1  # the damaged ones are kept aside, and still reported
    names = ["step-00000001", "step-00000002", "step-00000002.bad", "step-00000003", "step-00000003.bad"]
    assert sorted(p.name for p in state.iterdir()) == names


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted in the test's directory, resizable with `remount` (the tests run as root)."""
    where = tmp_path / "disk"
    where.mkdir()

    def mount(size: str) -> None:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        )
        if r.returncode:
            pytest.skip(
                f"cannot mount a tmpfs here ({r.stderr.decode().strip()}): run as root to test full disks"
            )

    def remount(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)

    yield where, mount, remount
    subprocess.run(["umount", str(where)], capture_output=True)


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_one_and_a_rerun_finishes_the_same(
    code_corpus, bpe_dir, small_disk, straight
):
    """Room for one checkpoint (2.5 MB) but not two: saving step 2 fails with one line saying what,
    where and how much; step 1 stays whole, nothing half-written stays; after the disk grows, the same
    command ends as an undisturbed run does."""
    disk, mount, remount = small_disk
    mount("3m")
    extra = [*SAVES, "--set", "keep_last=1"]
    with pytest.raises(UserError) as e:
        train_here(code_corpus, bpe_dir, disk / "run", *extra)
    said = " ".join(str(e.value).split())
    state = disk / "run" / "state"
    assert (
        f"no space left on the disk while writing checkpoint step 2 to {state / 'step-00000002.tmp'}" in said
    )
    assert "MB needed" in said and "rerun the same command" in said, said
    assert (
        sorted(p.name for p in state.iterdir()) == ["step-00000001"] and verify(disk / "run").exit_code == 0
    )
    remount("16m")
    train_here(code_corpus, bpe_dir, disk / "run", *extra)
    same_run(disk / "run", straight)


def test_a_full_disk_cuts_no_metrics_line_in_half(tmp_path, small_disk):
    """metrics.jsonl on a disk with no room left: one line saying so, the file as it was before."""
    from codemill.train.metrics import Metrics

    disk, mount, _ = small_disk
    mount("64k")
    metrics = Metrics(disk, True, 0)
    metrics.log({"step": 1, "loss": 2.0})
    before = (disk / "metrics.jsonl").read_bytes()
    (disk / "filler").write_bytes(b"\0" * (os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize))
    with pytest.raises(
        UserError, match=r"while writing the training metrics to .*metrics.jsonl \(about 10\.\d kB"
    ):
        metrics.log({"step": 2, "loss": 1.0, "note": "x" * 10_000})
    metrics.close()
    assert (disk / "metrics.jsonl").read_bytes() == before


def planted(root, tokenizer) -> tuple[Path, int]:
    """A corpus with a repository of random rare tokens between two of code, and the step (of 4
    windows of 64 tokens) whose windows are all from it, found by reading the training stream."""
    from conftest import STDLIB, write_corpus

    from codemill.data.config import DataConfig
    from codemill.data.stream import TrainingStream
    from codemill.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    rng = random.Random(0)
    noise = tok.decode([rng.randrange(1500, tok.vocab_size) for _ in range(130)])
    code = {
        n: (STDLIB / "json" / n).read_text() for n in ("__init__.py", "decoder.py", "scanner.py", "tool.py")
    }
    repos = {"a/json": {"json/__init__.py": code.pop("__init__.py")}, "b/noise": {"noise.py": noise},
             "c/json": {f"json/{n}": t for n, t in code.items()}}  # fmt: skip
    corpus = write_corpus(root, repos, rows_per_file=40)
    stream = TrainingStream(corpus, tok, DataConfig.from_dict({"seq_len": 64, "shuffle_repos": False}))
    units = [next(stream) and stream.cursor.current.unit for _ in range(160)]
    return corpus, next(s + 1 for s in range(40) if units[4 * s : 4 * s + 4] == [1] * 4)


def test_a_planted_loss_spike_is_rolled_back_and_its_data_skipped(bpe_dir, tmp_path):
    """The noise repository's step spikes over 1.2 x the median of the 4 steps before: the run goes
    back to its last checkpoint, on past the spike's data, records what it skipped, and a resume from
    before the spike does it all again the same way."""
    corpus, spike = planted(tmp_path / "corpus", bpe_dir)
    back, end = (spike - 1) // 5 * 5, spike + 5
    out = tmp_path / "run"
    sets = ["--set", f"max_steps={end}", "--set", "ckpt_every=5", "--set", "keep_last=9", "--set", "lr=1e-2",
            "--set", "data.shuffle_repos=false", "--set", "spike={window: 4, factor: 1.2, action: rollback}"]  # fmt: skip
    said = train_here(corpus, bpe_dir, out, *sets)
    assert f"step {spike}: loss spike" in said and f"rolled back to step-{back:08d}" in said, said
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("spike", spike), ("rollback", spike)], events
    assert events[1]["skipped_steps"] == [back + 1, spike] and events[1]["skipped_windows"] == 4 * (
        spike - back
    )
    rows = records(out)
    assert [x["step"] for x in rows] == list(range(1, end + 1))  # the steps redone are logged once
    assert rows[-1]["spikes"] == 1 and rows[-1]["skipped_steps"] == 1
    first = losses(out), {p: (out / p).read_bytes() for p in ("events.jsonl", "final/model.safetensors")}
    for p in out.glob("state/step-*"):
        if int(p.name[5:]) > back:
            shutil.rmtree(p)
    shutil.rmtree(out / "final")
    train_here(corpus, bpe_dir, out, *sets)  # from the checkpoint before the spike: the same spike and skip
    assert (losses(out), {p: (out / p).read_bytes() for p in first[1]}) == first


def codemill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "codemill.cli", *args], capture_output=True, text=True, env=ENV
    )


def one_line_disk_error(r: subprocess.CompletedProcess) -> str:
    said = " ".join(r.stdout.split())
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
    assert said.count("error:") == 1 and "no space left on the disk while writing" in said, said
    assert "rerun the same command" in said
    return said


def test_a_full_disk_while_curating_keeps_finished_tasks_and_a_rerun_gives_the_same_corpus(
    tmp_path, small_disk
):
    """A disk with room for 70% of what curation writes: one line, the stages done are kept (their
    completion marks), and once the disk grows the same command gives the undisturbed run's corpus."""
    from conftest import MIT, STDLIB, corpus_tables

    src = tmp_path / "src"
    for name in ("json", "http", "urllib", "email"):
        shutil.copytree(STDLIB / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "test*"))
        (src / name / "LICENSE").write_text(MIT)
    cmd = ["curate", str(src), "--set", "tasks=2", "--set", "workers=1", "--out"]
    assert codemill(*cmd, str(tmp_path / "clean")).returncode == 0
    written = sum(f.stat().st_size for f in (tmp_path / "clean").rglob("*") if f.is_file())
    disk, mount, remount = small_disk
    mount(f"{written * 7 // 10 // 1024}k")
    said = one_line_disk_error(codemill(*cmd, str(disk / "c")))
    assert str(disk / "c") in said
    assert any((disk / "c" / ".work" / "logs" / "scan" / "completions").iterdir())  # finished tasks stay
    remount(f"{written * 4 // 1024}k")
    assert codemill(*cmd, str(disk / "c")).returncode == 0
    assert corpus_tables(disk / "c") == corpus_tables(tmp_path / "clean")


def test_a_full_disk_while_writing_eval_results_says_so_and_a_rerun_gives_the_same_results(
    tmp_path, small_disk
):
    from codemill.eval.sandbox import available

    if not available():
        pytest.skip("bubblewrap is not installed (make installs it)")
    disk, mount, _ = small_disk
    mount("256k")
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize))
    cmd = ["eval", "humaneval", "--model", "reference", "--limit", "2", "--out"]
    said = one_line_disk_error(codemill(*cmd, str(disk / "ev")))
    assert "no space left" in said and str(disk / "ev") in said, said  # what and where
    filler.unlink()
    assert codemill(*cmd, str(disk / "ev")).returncode == 0
    assert codemill(*cmd, str(tmp_path / "ev")).returncode == 0
    a, b = (json.loads((p / "results.json").read_text()) for p in (disk / "ev", tmp_path / "ev"))
    assert a["summary"] == b["summary"] and a["summary"]["all"] == {
        "tasks": 2,
        "pass@1": 100.0,
        "executed": 2,
    }


@pytest.mark.parametrize("action", ["warn", "skip", "rollback"])
def test_the_spike_watch_judges_by_the_running_median(action):
    """The judge the loop asks before each update: no verdict until the window is full, a loss over
    factor x its median gets the action (warn applies it and lets it into the window, the others
    count a bad step), a non-finite loss or gradient is always skipped, a good step ends a bad run."""
    from codemill.train.config import TrainConfig
    from codemill.train.loop import Watch

    watch = Watch(TrainConfig.from_dict({"spike": {"window": 3, "factor": 2.0, "action": action}}))
    assert [watch.judge(x, False).apply for x in (9.0, 5.0, 4.0)] == [True] * 3  # filling the window
    v = watch.judge(10.1, False)  # median 5
    assert (v.apply, v.action, v.event["median"]) == (action == "warn", action, 5.0)
    assert list(watch.losses) == ([5.0, 4.0, 10.1] if action == "warn" else [9.0, 5.0, 4.0])
    assert watch.bad_in_row == (action != "warn") and watch.spikes == 1
    assert not watch.judge(float("nan"), False).apply and not watch.judge(4.0, True).apply
    assert watch.skipped == 2 + (action != "warn") and watch.bad_in_row == 2 + (action != "warn")
    assert watch.judge(4.5, False).apply and watch.bad_in_row == 0
    again = Watch(TrainConfig.from_dict({"spike": {"window": 3, "factor": 2.0, "action": action}}))
    again.load(json.loads(json.dumps(watch.state())))  # as a checkpoint's meta.json carries it
    assert again.state() == watch.state()


def test_hostile_archives_are_read_in_memory_inside_the_repository_and_bounded(tmp_path):
    """Curation never extracts an archive: a member named with `../` or an absolute path becomes a
    path inside the repository, a link member is dropped as not a regular file, and a zip bomb's
    member (16 MB of zeros in 16 kB) is read only up to the size limit; nothing is written anywhere."""
    import io
    import tarfile
    import zipfile

    from codemill.curate.config import CurateConfig
    from codemill.curate.sources import expand, open_unit, read_bytes

    code = b"print('hi')\n"
    with tarfile.open(tmp_path / "evil-1.0.tar.gz", "w:gz") as tf:
        for name in ("../../escape.py", "/etc/abs.py"):
            info = tarfile.TarInfo(name)
            info.size = len(code)
            tf.addfile(info, io.BytesIO(code))
        link = tarfile.TarInfo("passwd.py")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("../up.py", code)
        zf.writestr("zeros.py", b"\0" * (16 << 20))
    before = sorted(p for p in tmp_path.parent.rglob("*") if tmp_path not in p.parents)
    cfg = CurateConfig()
    seen = {}
    for name in ("evil-1.0.tar.gz", "bomb.zip"):
        [unit] = expand(str(tmp_path / name), cfg)
        seen |= {f.path: f for f in open_unit(unit, cfg)[1]}
    assert {p for p in seen if not p.startswith(".")} >= {
        "escape.py",
        "etc/abs.py",
        "passwd.py",
        "up.py",
        "zeros.py",
    }
    assert all(not p.startswith(("/", "..")) for p in seen), list(seen)
    assert seen["passwd.py"].error == "not_regular"
    assert read_bytes(seen["escape.py"], 10**6)[0] == code == read_bytes(seen["up.py"], 10**6)[0]
    assert len(read_bytes(seen["zeros.py"], 10**6)[0]) == 10**6 + 1  # at the limit, so dropped as too large
    assert sorted(p for p in tmp_path.parent.rglob("*") if tmp_path not in p.parents) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip", "evil-1.0.tar.gz"]
