"""benchmarks/gpu_check.sh --cpu-smoke: every step of the GPU check at toy size on the CPU, so the
script the first GPU session runs has run here since its last change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "gpu-tests", "bench-train", "train-small", "serve-demo", "serve-small"]
BUDGET_S = 180  # the bound for the smoke on this 2-core machine (it takes about 2 minutes)


def test_cpu_smoke_runs_every_step_and_reports_them(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    env.pop("GPU_CHECK_WORK", None)
    t0 = time.perf_counter()
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=2 * BUDGET_S)  # fmt: skip
    seconds = time.perf_counter() - t0
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + log[-5000:]
    assert seconds < BUDGET_S, f"the smoke took {seconds:.0f} s"
    result = json.loads((out / "gpu_check.json").read_text())
    assert [s["name"] for s in result["steps"]] == STEPS
    assert all(s["status"] == "ok" and s["exit_code"] == 0 for s in result["steps"]), result["steps"]
    by = {s["name"]: s["numbers"] for s in result["steps"]}
    assert by["gpu-tests"]["passed"] >= 5 and by["gpu-tests"]["failed"] == 0
    assert by["bench-train"]["tokens_per_s"] > 0
    train = by["train-small"]
    assert train["stopped_by"] == "deadline" and 0 < train["steps"] < train["planned_steps"]
    assert train["fim_loss"]["after"]["psm"] < train["fim_loss"]["before"]["psm"]  # it learned
    assert all(
        by[k]["engines"] and by[k]["at_once"]["tokens_per_s"] > 0 for k in ("serve-demo", "serve-small")
    )
    assert by["serve-demo"]["clients"][0]["errors"] == 0
    md = (out / "gpu_check.md").read_text()
    for name in STEPS:
        assert any(line.startswith(f"| {name} | ok |") for line in md.splitlines()), name
    # what the device tool brings back: at most 8 files, 16 MiB each, no deeper than 2 folders
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files)
    assert all(len(p.relative_to(out).parts) <= 3 for p in files)
    assert not list(tmp_path.glob("gpu_check_smoke.*"))  # its scratch directory is removed
