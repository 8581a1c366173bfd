"""A run killed with SIGKILL resumes to the same corpus as an uninterrupted run (the Ray and Slurm
executors: test_ray_cluster.py, test_slurm.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import corpus_tables, stdlib_package_repos

from codemill.curate.config import CurateConfig
from codemill.curate.pipeline import curate

PACKAGES = (
    "json",
    "email",
    "asyncio",
    "importlib",
    "logging",
    "xml",
    "http",
    "unittest",
    "concurrent",
    "urllib",
    "sqlite3",
    "ctypes",
)


@pytest.fixture(scope="module")
def many_repos(tmp_path_factory) -> Path:
    return stdlib_package_repos(tmp_path_factory.mktemp("many"), PACKAGES)


def _cli(src: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "codemill.cli",
        "curate",
        str(src),
        "--out",
        str(out),
        "--set",
        "tasks=6",
        "--set",
        "workers=2",
    ]


@pytest.fixture(scope="module")
def clean_run(many_repos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "c"
    assert subprocess.run(_cli(many_repos, out), capture_output=True, timeout=600).returncode == 0
    return out


@pytest.mark.parametrize("stage", ["scan", "buckets"])
def test_kill_9_then_resume_gives_the_same_corpus(many_repos, clean_run, tmp_path, stage):
    """Killed once some tasks of a stage are complete: in the scan, or among the dedup shards."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(many_repos, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    marks = killed / ".work" / "logs" / stage / "completions"
    deadline = time.time() + 300
    while time.time() < deadline and not (marks.exists() and any(marks.iterdir())):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists(), "the run finished before it could be killed"
    res = subprocess.run(_cli(many_repos, killed), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert corpus_tables(killed) == corpus_tables(clean_run)


def test_resume_with_other_settings_is_refused(many_repos, tmp_path):
    out = tmp_path / "c"
    curate([str(many_repos / "json")], out, CurateConfig(tasks=1, workers=1), quiet=True)
    with pytest.raises(ValueError, match="other sources or settings"):
        curate([str(many_repos / "json")], out, CurateConfig(tasks=2, workers=1), quiet=True)
    # how it executes is not what it produces: other workers or Slurm options find the run complete
    again = CurateConfig(tasks=1, workers=2, slurm_partition="gpu", slurm_time="1:00:00")
    assert curate([str(many_repos / "json")], out, again, quiet=True)["already_complete"]
