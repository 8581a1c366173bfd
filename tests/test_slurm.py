"""The cluster path on a real one-node Slurm: munged, slurmctld and slurmd started for the session
from the system packages (Makefile SYSPKGS: slurm-wlm munge) with a generated slurm.conf, then
`codemill curate --executor slurm` against the local executor, and a training job written by
`codemill train plan --sbatch` preempted (SIGUSR1, as `--signal` sends it), requeued, cancelled
with scancel and resubmitted, ending with the weights of a run never interrupted."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import EXECUTOR_SETTINGS, corpus_tables, wait_gone
from safetensors.torch import load_file

from codemill.train.dist import slurm_env
from codemill.train.plan import sbatch_script

DAEMONS = ("munged", "slurmctld", "slurmd")
# every task is a Slurm job whose Python start costs ~1.5 s of CPU; memory this one node can give
CURATE_SET = {**EXECUTOR_SETTINGS, "slurm_mem_per_cpu_gb": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(root: Path, host: str) -> str:
    """slurm.conf for this host alone; cred_expire=5: a requeued job may start 6 s later, not 121."""
    mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return f"""ClusterName=codemilltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/run/munge.sock,cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={min(8000, mem_mb * 9 // 10)} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-1500:] if path.exists() else f"({path} not written)"


def test_srun_tasks_become_torchrun_ranks_and_the_batch_shell_stays_one_process():
    env = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
           "SLURM_STEP_NODELIST": "gpu[3-4,7]", "SLURM_JOB_ID": "4321"}  # fmt: skip
    slurm_env(env)
    assert [env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")] == [
        "9", "16", "1", "gpu3", "33821"]  # fmt: skip
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "4321"}  # no step: the batch shell
    slurm_env(batch)
    assert "RANK" not in batch


def test_the_batch_script_has_the_plans_shape_and_parses(tmp_path):
    text = sbatch_script(["--corpus", "/data/my corpus"], tmp_path / "run", nodes=8, procs_per_node=8,
                         gpus_per_node=8, time="24:00:00", partition="gpu", signal_s=120)  # fmt: skip
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    for line in ("#SBATCH --nodes=8", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --requeue", "#SBATCH --signal=USR1@120", "#SBATCH --partition=gpu"):  # fmt: skip
        assert line in text.splitlines()
    assert (
        "--nproc-per-node=8" in text and "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in text
    )
    assert "'/data/my corpus'" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text


@pytest.fixture(scope="session")
def slurm():
    """A one-node Slurm (2 CPUs, partition debug) for the session; its daemons stop at the end.
    Skipped, with the reason, where it cannot start (not root, packages missing, daemons failing)."""
    if os.geteuid() != 0:
        pytest.skip("Slurm cannot start: the daemons need root (CI runs the tests as root)")
    if missing := [d for d in DAEMONS if shutil.which(d) is None]:
        pytest.skip(
            f"Slurm cannot start: {', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
        )
    root = Path(tempfile.mkdtemp(prefix="codemill-slurm-"))
    root.chmod(0o755)  # munged wants its socket's directory reachable by all
    for d in ("run", "state", "spool", "log", "munge"):
        (root / d).mkdir(mode=0o755 if d == "run" else 0o700)
    key = root / "munge" / "key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, host))
    sock = str(root / "run" / "munge.sock")
    started: list[tuple[str, Path]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        try:
            for name, cmd, pid in (
                ("munged", ["munged", f"--socket={sock}", f"--key-file={key}", f"--pid-file={root}/run/munged.pid",
                            f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge/seed"],
                 root / "run" / "munged.pid"),
                ("slurmctld", ["slurmctld", "-f", str(conf)], root / "run" / "slurmctld.pid"),
                ("slurmd", ["slurmd", "-f", str(conf), "-N", host], root / "run" / "slurmd.pid"),
            ):  # fmt: skip
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                if r.returncode:
                    pytest.skip(f"Slurm cannot start: {name} exited {r.returncode}: {r.stderr[-500:]}")
                started.append((name, pid))
            state = ""
            for _ in range(60):
                state = subprocess.run(
                    ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True
                ).stdout.strip()
                if state == "idle":
                    break
                time.sleep(0.5)
            else:
                pytest.skip(
                    f"Slurm cannot start: the node is {state!r}\n{_tail(root / 'log' / 'slurmd.log')}"
                )
            yield root
        finally:
            subprocess.run(["scancel", "--full", "--user=root"], capture_output=True)
            stopped: set[int] = set()
            for name, pid in reversed(started):  # only the daemons this fixture started, by their pid
                try:
                    daemon = int(pid.read_text().split()[0])
                    os.kill(daemon, signal.SIGTERM)
                    stopped.add(daemon)
                except (OSError, ValueError, IndexError):
                    print(f"could not stop {name} ({pid})", file=sys.stderr)
            wait_gone(stopped, 1.0)
            shutil.rmtree(root, ignore_errors=True)


def _wait(predicate, timeout: float, what: str, poll: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _job(job: str) -> dict[str, str]:
    """`scontrol show job` as a mapping (JobState, Restarts, ...)."""
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _sbatch(script: Path) -> str:
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def test_curate_under_slurm_equals_local_and_resubmits_only_unfinished_tasks(
    slurm, executor_repos, executor_local_corpus, tmp_path
):
    out = tmp_path / "slurm"
    cmd = [sys.executable, "-m", "codemill.cli", "curate", str(executor_repos), "--out", str(out), "--executor",
           "slurm", "--partition", "debug", "--time", "10", *(a for k, v in CURATE_SET.items() for a in ("--set", f"{k}={v}"))]  # fmt: skip
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert dry.stdout.count("#!/bin/bash") == 7 and dry.stdout.count("--dependency=afterok") == 6
    assert "#SBATCH --partition=debug" in dry.stdout and "#SBATCH --signal=USR1@60" in dry.stdout
    assert not (out / "manifest.json").exists() and not list((out / ".work").rglob("completions"))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["executor"] == "slurm" and manifest["files"]["out"] > 0
    logs = out / ".work" / "logs"
    assert list((logs / "buckets" / "slurm_logs").glob("*_1.out")), "buckets ran as a 2-task array job"
    assert corpus_tables(out) == executor_local_corpus
    # a lost task: its completion marker gone, the corpus not assembled; the rerun submits that task only
    (logs / "verify" / "completions" / "00001").unlink()
    (out / "manifest.json").unlink()
    before = {s: set((logs / s / "slurm_logs").iterdir()) for s in ("scan", "verify")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((logs / "verify" / "ranks_to_run.json").read_text()) == [1]
    assert len(set((logs / "verify" / "slurm_logs").iterdir()) - before["verify"]) == 1
    assert set((logs / "scan" / "slurm_logs").iterdir()) == before["scan"]  # finished stages: not resubmitted
    assert corpus_tables(out) == executor_local_corpus


RECIPE = """data:
  seq_len: 64
train:
  model: {hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2}
  global_batch: 4
  micro_batch: 2
  data_shards: 2
  warmup_steps: 2
  max_steps: 60
  ckpt_every: 5
  log_every: 5
  threads: 1
"""


def _steps(out: Path) -> list[int]:
    names = (p.name.removeprefix("step-") for p in (out / "state").glob("step-*"))
    return sorted(int(n) for n in names if n.isdigit())  # published checkpoints, not *.tmp


def test_train_job_from_the_plan_is_preempted_cancelled_and_resumed_exactly(
    slurm, code_corpus, bpe_dir, tmp_path
):
    host = socket.gethostname().split(".")[0]
    try:
        socket.gethostbyname(host)
    except OSError:
        pytest.skip(
            f"this host's name {host!r} does not resolve, and a job's ranks meet at its first node's name"
        )
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    train = ["-m", "codemill.cli", "train", "--corpus", str(code_corpus), "--tokenizer", str(bpe_dir), "--recipe", str(recipe)]  # fmt: skip
    # the run never interrupted: 2 tasks of one srun step, no torchrun (train reads SLURM_*)
    r = subprocess.run(["srun", "-n", "2", "-c", "1", sys.executable, *train, "--out", str(straight)],
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    ranks = {f.name for f in (straight / "state" / "step-00000060").glob("rng-rank-*.pt")}
    assert ranks == {"rng-rank-0.pt", "rng-rank-1.pt"}, "one run of world size 2, not two of 1"

    out, script = tmp_path / "run", tmp_path / "train.sbatch"
    plan = [sys.executable, "-m", "codemill.cli", "train", "plan", str(recipe), "--gpus", "2", "--cpu", "--sbatch",
            str(script), "--corpus", str(code_corpus), "--tokenizer", str(bpe_dir), "--out", str(out),
            "--partition", "debug", "--time", "10", "--cpus-per-task", "2", "--signal-s", "30"]  # fmt: skip
    r = subprocess.run(plan, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    text = script.read_text()
    assert "--signal=USR1@30" in text and "#SBATCH --requeue" in text and "--nproc-per-node=2" in text
    log = lambda job: _tail(out / f"slurm-{job}.out")  # noqa: E731

    job = _sbatch(script)
    # preemption: SIGUSR1 to the job's steps, as `--signal=USR1@30` sends it before the limit
    _wait(lambda: _steps(out), 120, f"the first checkpoint of job {job}\n{log(job)}")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    _wait(lambda: _job(job).get("Restarts") == "1", 60, f"job {job} to requeue itself\n{log(job)}", poll=0.2)
    stopped = re.search(r"stopped: (\{.*\}); requeueing", log(job))
    assert stopped, log(job)
    stop = json.loads(stopped.group(1))
    assert stop["signal"] == "SIGUSR1" and stop["step"] < 60 and stop["step"] in _steps(out)
    # the requeued job resumes from that step; cancelled once it saved a later one
    _wait(lambda: any(s > stop["step"] for s in _steps(out)), 120, f"job {job} to resume\n{log(job)}")
    subprocess.run(["scancel", job], check=True)
    _wait(lambda: _job(job).get("JobState") == "CANCELLED", 60, f"job {job} to end\n{log(job)}", poll=0.2)
    assert not (out / "final").exists(), "the job finished before it could be cancelled"

    again = _sbatch(script)  # resubmitted by hand: resumes from the last checkpoint
    _wait(lambda: _job(again).get("JobState") in ("COMPLETED", "FAILED"), 180, f"job {again}", poll=0.5)
    assert _job(again)["JobState"] == "COMPLETED", log(again)
    wa, wb = (load_file(d / "final" / "model.safetensors") for d in (straight, out))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
