"""`codemill curate --executor ray` on a Ray cluster of two nodes, each started as its own processes
(`ray start --head`, `ray start --address`): tasks run on both nodes and the corpus is the local
executor's; a worker killed by its pid in the middle of the dedup stages is retried by datatrove's
executor and the corpus is still the same (issue 37, lost workers)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import EXECUTOR_SETTINGS, corpus_tables, wait_gone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _busy(raylets: set[int]) -> dict[int, int]:
    """Workers running a datatrove task (`ray::RankWorker.run_for_rank`) -> the raylet they run under."""
    out = {}
    for pid, cmd in _procs().items():
        if cmd.startswith("ray::RankWorker.run_for_rank"):
            try:
                parent = _ppid(pid)
            except (OSError, IndexError, ValueError):
                continue
            if parent in raylets:
                out[pid] = parent
    return out


def _procs() -> dict[int, str]:
    """pid -> command line (what setproctitle shows: `ray::RankWorker.run_for_rank` for a busy worker)."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


class Cluster:
    """A head and a second node on this machine, each with its own raylet; stopped by the pids of the
    processes started under its temp dir and their children (`ray stop` would stop every Ray here)."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        token = root / "auth_token"
        token.write_text(os.urandom(32).hex())
        # token auth with a token of our own: a ~/.ray/auth_token left by another cluster is not ours
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}

    def start(self) -> None:
        ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        common = ["--num-cpus=1", "--disable-usage-stats", f"--temp-dir={self.root}", "--node-ip-address=127.0.0.1",
                  "--dashboard-agent-listen-port=0"]  # fmt: skip
        for cmd in (
            [ray, "start", "--head", f"--port={self.port}", "--include-dashboard=false", *common],
            [ray, "start", f"--address={self.address}", *common],
        ):
            r = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=180)
            if r.returncode:
                raise RuntimeError(f"{' '.join(cmd[1:3])} exited {r.returncode}: {r.stderr[-1500:]}")
        self.env["RAY_ADDRESS"] = self.address

    def raylets(self) -> set[int]:
        return {p for p, cmd in _procs().items() if "raylet/raylet" in cmd and str(self.root) in cmd}

    def stop(self) -> None:
        procs = _procs()
        ours = {p for p, cmd in procs.items() if str(self.root) in cmd}
        children: set[int] = set()
        for p in procs:
            try:
                if _ppid(p) in ours:
                    children.add(p)
            except (OSError, IndexError, ValueError):
                continue
        alive = ours | children
        for sig in (signal.SIGTERM, signal.SIGKILL):  # a second for SIGTERM, then SIGKILL for the rest
            for p in alive:
                try:
                    os.kill(p, sig)
                except OSError:
                    continue
            alive = wait_gone(alive, 1.0)


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    root = Path(tempfile.mkdtemp(prefix="cmray"))  # short: Ray's socket paths must stay under 107 bytes
    cluster = Cluster(root)
    try:
        cluster.start()
        if len(cluster.raylets()) != 2:
            pytest.skip(f"Ray cannot start two nodes here: raylets {cluster.raylets()}")
        yield cluster
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"Ray cannot start a head and a second node here: {e}")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _cmd(repos: Path, out: Path) -> list[str]:
    sets = [a for k, v in EXECUTOR_SETTINGS.items() for a in ("--set", f"{k}={v}")]
    return [
        sys.executable,
        "-m",
        "codemill.cli",
        "curate",
        str(repos),
        "--out",
        str(out),
        "--executor",
        "ray",
        *sets,
    ]


class Watch(threading.Thread):
    """The raylets under which workers were seen running a task, sampled every 20 ms until stopped."""

    def __init__(self, cluster: Cluster):
        super().__init__(daemon=True)
        self.raylets, self.seen = cluster.raylets(), set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.seen |= set(_busy(self.raylets).values())


def test_two_node_cluster_runs_tasks_on_both_nodes_and_gives_the_local_corpus(
    ray_cluster, executor_repos, executor_local_corpus, tmp_path
):
    watch = Watch(ray_cluster)
    watch.start()
    r = subprocess.run(
        _cmd(executor_repos, tmp_path / "ray"),
        capture_output=True,
        text=True,
        env=ray_cluster.env,
        timeout=600,
    )
    watch.done.set()
    watch.join()
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert watch.seen == watch.raylets, f"tasks ran under raylets {watch.seen} of {watch.raylets}"
    assert corpus_tables(tmp_path / "ray") == executor_local_corpus


def test_a_worker_killed_in_the_dedup_stages_is_retried_to_the_same_corpus(
    ray_cluster, executor_repos, executor_local_corpus, tmp_path
):
    out = tmp_path / "ray"
    raylets = ray_cluster.raylets()
    proc = subprocess.Popen(_cmd(executor_repos, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ray_cluster.env)  # fmt: skip
    logs = out / ".work" / "logs"
    killed, stage = None, None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and proc.poll() is None:
        stage = next((s for s in ("verify", "buckets", "exact") if (logs / s).is_dir()), None)
        busy = list(_busy(raylets)) if stage else []
        if busy and len(list((logs / stage / "completions").glob("*"))) < EXECUTOR_SETTINGS["tasks"]:
            os.kill(busy[0], signal.SIGKILL)
            killed = busy[0]
        time.sleep(0.01)
    output = proc.communicate(timeout=600)[0]
    assert killed, f"no worker of the dedup stages was seen busy\n{output[-2000:]}"
    assert proc.returncode == 0, output[-3000:]
    warned = (logs / f"{stage}.stderr").read_text(errors="replace")
    assert "RayActorError" in warned or "WorkerCrashedError" in warned, warned[-2000:]  # retried, not lucky
    assert corpus_tables(out) == executor_local_corpus
