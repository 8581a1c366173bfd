"""`codemill run` end to end on small real repositories, then a rerun that finds every stage done."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import MIT, STDLIB

from codemill.eval.sandbox import available

RECIPE = {
    "run": {
        "holdout": 0.4,
        "holdout_unit": "repo",  # whole repositories (auto would hold out files of so few)
        "vocab_size": 600,
        "fim_per_type": 3,
        "crossfile_per_repo": 3,
        "suites": ["fim-eval", "crosscodeeval/infile", "humaneval", "fim-loss"],
        "eval_limit": 6,
        "eval_max_tokens": 6,
        # fim-loss scores every held-out file and task, twice (trained, untrained) in each of two runs:
        # a few of each exercise the same path
        "loss_files": 2,
        "loss_limit": 6,
    },
    "curate": {"tasks": 2, "workers": 1},
    "data": {"seq_len": 128},
    "train": {"preset": "demo", "model": {"num_layers": 1, "hidden_size": 64, "intermediate_size": 128,
              "num_heads": 2, "num_kv_heads": 1}, "max_steps": 3, "warmup_steps": 1, "global_batch": 2,
              "micro_batch": 2, "ckpt_every": 2, "log_every": 1},
}  # fmt: skip


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Ten repositories: standard-library packages, each with a licence."""
    root = tmp_path_factory.mktemp("sources")
    for pkg in (
        "json",
        "email",
        "urllib",
        "wsgiref",
        "xmlrpc",
        "html",
        "http",
        "logging",
        "importlib",
        "sqlite3",
    ):
        repo = root / pkg
        shutil.copytree(STDLIB / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__", "test*"))
        (repo / "LICENSE").write_text(MIT)
    return root


@pytest.mark.skipif(not available(), reason="bubblewrap is needed to execute HumanEval")
def test_run_chains_the_stages_and_skips_what_is_done(sources, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    RECIPE["run"]["sources"] = [str(sources)]
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "codemill.cli", "run", str(recipe), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    stages = [k for k in json.loads((out / "stages.json").read_text()) if not k.endswith("/started")]
    assert stages == ["curate", "tokenizer", "bench", "train", "eval fim-eval", "eval crosscodeeval/infile",
                      "eval humaneval", "eval fim-loss"]  # fmt: skip
    held = (out / "bench" / "fim" / "heldout_repos.txt").read_text().split()
    assert held and set(held) < {p.name for p in sources.iterdir()}
    config = json.loads((out / "train" / "final" / "codemill.json").read_text())
    assert config["data"]["exclude_repos"].endswith("heldout_repos.txt")  # the model never saw them
    report = (out / "report.md").read_text()
    assert "Table V. FIM-Eval" in report and "Table II. NL2Code" in report and "codemill serve" in report
    assert "## What training bought" in report and "| untrained initialisation |" in report
    # the realised objective mix beside the drawn one, and how many repositories the stream reached
    reached = int(report.split(" repositories over 1 data shard")[0].rsplit(" ", 1)[1])
    assert "drawn SFIM 70% / FIM 15% / NTP 15%" in report and 1 <= reached <= 10 - len(held)
    assert (out / "train" / "loss.png").exists()

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # everything is up to date
    assert r.returncode == 0 and r.stdout.count(": up to date (") == len(stages), r.stdout
    RECIPE["run"]["eval_limit"] = 4  # a changed eval setting redoes the generation evals only
    recipe.write_text(yaml.safe_dump(RECIPE))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert (
        r.returncode == 0
        and r.stdout.count(": up to date (") == 5
        and "eval fim-loss: up to date" in r.stdout
    )
    RECIPE["train"]["lr"] = 5e-4  # a changed training setting trains again from step 0, never resuming
    recipe.write_text(yaml.safe_dump(RECIPE))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "train: the settings changed" in r.stdout, r.stdout
    steps = [json.loads(line)["step"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 3  # one run's steps, not the old run's too


@pytest.mark.parametrize("name", ["demo", "small", "aixcoder-7b", "ablate-cpu"])
def test_shipped_recipes_are_valid(name):
    from pathlib import Path

    from codemill.curate.config import CurateConfig
    from codemill.data.config import DataConfig
    from codemill.flow.run import RunConfig, load_recipe
    from codemill.train.config import TrainConfig

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / f"{name}.yaml")
    assert set(recipe) <= {"run", "curate", "data", "train"}
    for cls in (RunConfig, CurateConfig, DataConfig, TrainConfig):
        cls.from_dict(recipe.get(cls.section))  # unknown keys or bad values raise


def test_ablation_over_seeds_pairs_tasks_and_bootstraps(tmp_path):
    """Two seeds of three variants, fim-loss results written as the suite writes them: paper's middles
    are 0.1 bit per byte better on every task up to small noise (two seeds: a t quantile of 12.7), its
    files no different; the random-order model is 0.05 better at one seed and 0.05 worse at the other,
    which no number of tasks can settle."""
    import math
    import random

    from codemill.flow.ablate import paired, paired_table, seeds_table

    rng = random.Random(0)
    dirs = []
    for seed in (0, 1):
        for name, shift in (("paper", -0.1), ("ntp-fim", 0.0), ("paper-random-order", -0.15 + 0.1 * seed)):
            run = tmp_path / f"seed{seed}" / name
            (run / "eval" / "fim-loss").mkdir(parents=True)
            (run / "train").mkdir()
            (run / "train" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0 + shift}) + "\n")
            tasks = [{"task_id": f"t{i}", "bytes": 100, "psm_nats": (2.0 + shift + rng.gauss(0, 0.01)) * 100 * math.log(2)}
                     for i in range(60)]  # fmt: skip
            files = [
                {"nats": (3.0 + rng.gauss(0, 0.05)) * 500 * math.log(2), "bytes": 500} for _ in range(30)
            ]
            lines = [{"task_id": f"x{i}", "bytes": 40, "retrieval_nats": (4.0 + rng.gauss(0, 0.05)) * 40 * math.log(2)}
                     for i in range(20)]  # fmt: skip
            summary = {"all": {"psm_bits_per_byte": 2.0 + shift}, "left-to-right": {"bits_per_byte": 3.0},
                       "cross-file": {"retrieval_bits_per_byte": 4.0}}  # fmt: skip
            (run / "eval" / "fim-loss" / "results.json").write_text(
                json.dumps(
                    {
                        "suite": "fim-loss",
                        "summary": summary,
                        "tasks": tasks,
                        "files": files,
                        "crossfile": lines,
                    }
                )
            )
        dirs.append(tmp_path / f"seed{seed}")
    got = paired(dirs, "paper", "ntp-fim", "psm")
    assert got.items == 60 and abs(got.mean + 0.1) < 0.02 and got.high < 0
    assert len(got.each) == 2 and all(abs(x + 0.1) < 0.03 for x in got.each)  # each seed's mean difference
    got = paired(dirs, "paper", "paper-random-order", "psm")
    assert got.each[0] > 0.03 and got.each[1] < -0.03 and got.low < 0 < got.high  # the seeds disagree
    got = paired(dirs, "paper", "ntp-fim", "files")
    assert got.items == 30 and got.low < 0 < got.high
    assert paired(dirs, "paper", "ntp-fim", "spm") is None  # not measured: no row
    assert paired(dirs, "paper", "ntp-fim", "retrieval").items == 20  # cross-file lines, paired by task
    text = paired_table(dirs, ["ntp-fim", "paper"]) + seeds_table(dirs, ["ntp-fim", "paper"])
    assert "| paper − ntp-fim | FIM middles, PSM | 60 (60) |" in text and "1.900 ± 0.000" in text
    assert (
        "| paper − ntp-fim | cross-file line, retrieved context | 20 (20) |" in text
        and "4.000 ± 0.000" in text
    )
