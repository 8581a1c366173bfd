"""The ablation's interval keeps its coverage with few seeds; verdicts and power follow the page's rules."""

import numpy as np
import pytest
from scipy import stats

from codemill.flow.stats import (
    compressed_bits_per_byte,
    paired_interval,
    power,
    seeds_for,
    task_repository,
    verdict,
)

SIMS = 2000


def _simulate(seeds: int, seed_sd: float, repo_sd: float, cross_sd: float, rng) -> tuple:
    """SIMS data sets from a crossed model of the ablation (true difference 0.01 bits per byte): 20
    held-out repositories of 1-40 items each, bytes log-normal (a few long items dominate the pool),
    a seed effect shared by every item, a repository effect, a repository-by-seed effect and item noise."""
    repos = 20
    sizes = rng.integers(1, 41, size=repos)
    groups = np.repeat(np.arange(repos), sizes)
    nbytes = np.exp(rng.normal(5.0, 1.0, size=len(groups)))
    per_byte = (
        0.01
        + rng.normal(0, seed_sd, (SIMS, 1, seeds))
        + rng.normal(0, repo_sd, (SIMS, repos, 1))[:, groups]
        + rng.normal(0, cross_sd, (SIMS, repos, seeds))[:, groups]
    )
    noise = rng.normal(0, 1.0, (SIMS, len(groups), seeds)) * np.sqrt(nbytes)[:, None]
    return per_byte * nbytes[:, None] + noise, nbytes, groups


@pytest.mark.parametrize("seeds", [3, 5, 17])
@pytest.mark.parametrize(
    "seed_sd,repo_sd,cross_sd",
    [(0.02, 0.005, 0.005), (0.003, 0.03, 0.003), (0.01, 0.01, 0.01)],
    ids=["seeds dominate (as measured)", "repositories dominate", "even"],
)
def test_interval_covers_at_few_seeds(seeds, seed_sd, repo_sd, cross_sd):
    """At least 0.93 of nominal-95% intervals hold the true difference (binomial SE 0.005 at 2,000)."""
    rng = np.random.default_rng(seeds)
    diff, nbytes, groups = _simulate(seeds, seed_sd, repo_sd, cross_sd, rng)
    got = paired_interval(diff, nbytes, groups, reps=500)
    covered = np.mean([r.low <= 0.01 <= r.high for r in got])
    assert covered >= 0.93, covered
    if seeds == 3 and seed_sd > repo_sd:  # the same standard error with a normal quantile falls short
        z = stats.norm.ppf(0.975)
        assert np.mean([abs(r.mean - 0.01) <= z * r.se for r in got]) < 0.88


def test_one_seed_is_the_repository_bootstrap():
    """One seed (the run report's adapted − base, two fixed models): the seed term vanishes and the
    interval is the item term; resampling repositories covers, resampling items as if independent
    does not when repositories differ."""
    rng = np.random.default_rng(1)
    diff, nbytes, groups = _simulate(1, 0.0, 0.03, 0.0, rng)
    clustered = paired_interval(diff, nbytes, groups, reps=500)
    alone = paired_interval(diff, nbytes, np.arange(len(groups)), reps=500)
    assert clustered[0].seed_sd == 0.0 and clustered[0].df == pytest.approx(19)
    assert np.mean([r.low <= 0.01 <= r.high for r in clustered]) >= 0.93
    assert np.mean([r.low <= 0.01 <= r.high for r in alone]) < 0.85


def test_verdict_wording():
    assert verdict(-0.046, -0.018) == "detected, A better (size unsettled at 0.02)"
    assert verdict(-0.05, -0.021) == "detected, A better (by at least 0.02)"
    assert verdict(0.002, 0.008) == "detected, B better (by less than 0.02)"
    assert verdict(-0.0121, 0.0080) == "not detected; excluded above 0.013"
    assert verdict(-0.040, 0.027) == "not detected; cannot tell at 0.02"


def test_power_matches_the_review():
    """Issue 36's figures: SFIM against FIM (3 seeds, sd 0.0135) about 0.31 against 0.02, and about 6
    seeds for 80%."""
    sd = float(np.std([-0.007, 0.007, -0.020], ddof=1))
    assert power(sd, 3) == pytest.approx(0.31, abs=0.04)
    assert seeds_for(sd) in (5, 6)
    assert power(sd, 17) > power(sd, 5) > power(sd, 3)


def test_compressors_pool_by_bytes():
    text = "def f(x):\n    return x + 1\n" * 200
    got = compressed_bits_per_byte([text, "x"])
    assert 0 < got["xz -9"] < 1.0 and 0 < got["gzip -9"] < 1.0  # repetitive code compresses well
    assert compressed_bits_per_byte(["x"])["gzip -9"] > 8  # one byte costs its header


def test_task_repository():
    assert (
        task_repository("FIM-Eval/TypeScript/@nestjs/core@12.5.1/lib/a.ts#if_statement")
        == "@nestjs/core@12.5.1"
    )
    assert task_repository("FIM-Eval/Python/pip-26.3/src/pip/x.py#single_line") == "pip-26.3"
    assert task_repository("aiohttp-cors-0.8.1/aiohttp_cors/abc.py:31") == "aiohttp-cors-0.8.1"
    assert task_repository("@nestjs/core@12.5.1/lib/a.ts:3") == "@nestjs/core@12.5.1"
    assert task_repository("t7") == "t7"


def test_ablation_tables_mark_primaries_count_intervals_and_report_loss_tokens(tmp_path):
    """Three seeds of ntp and ntp-fim written as fim-loss and training write them: FIM middles 0.05 bit
    per byte better with FIM in every repository at every seed, files no different; ntp-fim pads (fewer
    loss tokens). The tables say so with the page's wording, mark the primary rows and count intervals."""
    import json
    import math

    from codemill.flow.ablate import paired_table, seeds_table, type_table

    rng = np.random.default_rng(0)
    dirs = []
    for seed in range(3):
        for name, gain, tokens in (("ntp", 0.0, 8192), ("ntp-fim", -0.05, 7000)):
            run = tmp_path / f"seed{seed}" / name
            (run / "eval" / "fim-loss").mkdir(parents=True)
            (run / "train").mkdir()
            rows = [
                {"step": s, "loss": 3.0, "tokens_ntp": tokens, "tokens_fim": 0, "tokens_sfim": 0}
                for s in (1, 2)
            ]
            (run / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            tasks = [
                {"task_id": f"FIM-Eval/Python/repo{i % 6}/f{i}.py#{kind}", "task_type": kind, "bytes": 100,
                 "psm_nats": (2.0 + gain + rng.normal(0, 0.01)) * 100 * math.log(2)}
                for i in range(60) for kind in ("if_statement", "for_statement")
            ]  # fmt: skip
            files = [
                {"nats": (3.0 + rng.normal(0, 0.05)) * 500 * math.log(2), "bytes": 500} for _ in range(30)
            ]
            summary = {"all": {"psm_bits_per_byte": 2.0 + gain}, "left-to-right": {"bits_per_byte": 3.0}}
            results = {
                "suite": "fim-loss",
                "summary": summary,
                "tasks": tasks,
                "files": files,
                "crossfile": [],
            }
            (run / "eval" / "fim-loss" / "results.json").write_text(json.dumps(results))
        dirs.append(tmp_path / f"seed{seed}")
    text = paired_table(dirs, ["ntp", "ntp-fim"], [f"r{i % 5}" for i in range(30)])
    assert "| ntp-fim − ntp (primary) | FIM middles, PSM | 120 (6) |" in text
    assert "detected, A better (by at least 0.02)" in text
    assert "| ntp-fim − ntp (primary) | files, left to right | 30 (5) |" in text and "not detected" in text
    assert "2 intervals: at 95% each, about 0.1" in text
    types = type_table(dirs, [("ntp-fim", "ntp")])
    assert "2 intervals" in types and types.count("detected, A better") == 2
    means = seeds_table(dirs, ["ntp", "ntp-fim"])  # loss tokens in millions: 2 × 8,192 and 2 × 7,000
    assert (
        "| ntp | 3.000 ± 0.000 | 0.016 ± 0.000 |" in means
        and "| ntp-fim | 3.000 ± 0.000 | 0.014 ± 0.000 |" in means
    )
