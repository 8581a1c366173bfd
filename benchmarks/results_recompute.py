"""docs/results.md's paired table, recomputed (issue 36) from the per-seed differences the page reported.

The per-item outputs of runs/ablate-cpu and runs/ablate-cpu2 are gone, so the repository term cannot be
resampled: the interval is flow/stats.py's with the seed term only (a t interval over the per-seed
differences), and a second column adds the repository term measured at one seed in runs/ablate-ctx
(half-widths ±0.011 FIM middles, ±0.015 files, ±0.019 cross-file lines), a sensitivity check that errs
wide. Power and seeds for 80% come from the per-seed spread; "detectable" is the difference the seeds
run detect with 80% power. Run: python benchmarks/results_recompute.py
"""

import numpy as np
from scipy import optimize, stats

from codemill.flow.stats import paired_interval, power, seeds_for, verdict

ROWS = {  # (run, comparison, measure): per-seed differences as the page printed them (3 decimals)
    ("1", "paper − ntp-fim", "FIM middles, PSM"): [-0.023, -0.020, -0.047],
    ("1", "paper − ntp-fim", "FIM middles, SPM"): [-0.027, -0.024, -0.048],
    ("1", "paper − ntp-fim", "files"): [-0.058, -0.024, -0.023],
    ("1", "paper − ntp-fim", "x-file in-file"): [-0.030, -0.019, -0.016],
    ("1", "paper − ntp-fim", "x-file BM25"): [-0.027, -0.017, -0.012],
    ("1", "ntp-fim − ntp", "FIM middles, PSM"): [0.007, -0.018, 0.001],
    ("1", "ntp-fim − ntp", "FIM middles, SPM"): [0.006, -0.021, -0.002],
    ("1", "ntp-fim − ntp", "files"): [0.027, -0.011, -0.002],
    ("1", "ntp-fim − ntp", "x-file in-file"): [0.015, -0.014, 0.002],
    ("1", "ntp-fim − ntp", "x-file BM25"): [0.015, -0.015, -0.001],
    ("1", "paper − paper-random-order", "FIM middles, PSM"): [0.000, 0.025, 0.020],
    ("1", "paper − paper-random-order", "FIM middles, SPM"): [-0.000, 0.025, 0.017],
    ("1", "paper − paper-random-order", "files"): [-0.000, 0.004, 0.015],
    ("1", "paper − paper-random-order", "x-file in-file"): [-0.034, 0.008, 0.047],
    ("1", "paper − paper-random-order", "x-file BM25"): [-0.029, 0.010, 0.045],
    ("2", "paper − paper-random-order", "FIM middles, PSM"): [
        -0.017,
        +0.070,
        -0.011,
        +0.076,
        -0.028,
        +0.001,
        +0.038,
        +0.116,
        +0.002,
        -0.025,
        -0.023,
        -0.034,
        +0.008,
        +0.015,
        +0.009,
        -0.035,
        +0.039,
    ],
    ("2", "paper − paper-random-order", "FIM middles, SPM"): [
        -0.020,
        +0.068,
        -0.009,
        +0.073,
        -0.029,
        +0.004,
        +0.036,
        +0.113,
        +0.001,
        -0.021,
        -0.020,
        -0.034,
        +0.009,
        +0.019,
        +0.008,
        -0.036,
        +0.036,
    ],
    ("2", "paper − paper-random-order", "files"): [
        -0.012,
        +0.055,
        -0.028,
        +0.082,
        +0.001,
        -0.043,
        +0.024,
        +0.136,
        -0.025,
        -0.077,
        -0.023,
        -0.046,
        -0.000,
        +0.004,
        +0.005,
        -0.036,
        -0.004,
    ],
    ("2", "paper − paper-random-order", "x-file in-file"): [
        -0.040,
        +0.045,
        -0.013,
        +0.077,
        -0.013,
        +0.012,
        +0.003,
        +0.085,
        -0.010,
        -0.049,
        +0.004,
        -0.005,
        +0.009,
        -0.001,
        +0.024,
        +0.007,
        +0.024,
    ],
    ("2", "paper − paper-random-order", "x-file BM25"): [
        -0.043,
        +0.045,
        -0.018,
        +0.078,
        -0.012,
        +0.014,
        +0.003,
        +0.084,
        -0.010,
        -0.045,
        +0.002,
        -0.005,
        +0.006,
        +0.001,
        +0.022,
        +0.007,
        +0.022,
    ],
    ("2", "paper − paper-fim", "FIM middles, PSM"): [-0.007, +0.007, -0.020],
    ("2", "paper − paper-fim", "FIM middles, SPM"): [-0.009, +0.007, -0.020],
    ("2", "paper − paper-fim", "files"): [-0.011, +0.002, -0.022],
    ("2", "paper − paper-fim", "x-file in-file"): [-0.001, +0.008, -0.009],
    ("2", "paper − paper-fim", "x-file BM25"): [-0.004, +0.005, -0.005],
    ("2", "ntp-fim − ntp", "FIM middles, PSM"): [-0.025, -0.029, -0.020, -0.008, -0.006],
    ("2", "ntp-fim − ntp", "FIM middles, SPM"): [-0.028, -0.035, -0.022, -0.012, -0.008],
    ("2", "ntp-fim − ntp", "files"): [-0.032, -0.046, -0.016, -0.006, +0.003],
    ("2", "ntp-fim − ntp", "x-file in-file"): [-0.017, -0.031, -0.006, -0.005, -0.002],
    ("2", "ntp-fim − ntp", "x-file BM25"): [-0.018, -0.029, -0.007, -0.004, -0.002],
    ("2", "paper − ntp-fim", "FIM middles, PSM"): [-0.002, -0.010, -0.010, +0.005, -0.039],
    ("2", "paper − ntp-fim", "FIM middles, SPM"): [-0.005, -0.009, -0.010, +0.004, -0.041],
    ("2", "paper − ntp-fim", "files"): [+0.001, +0.007, +0.015, +0.012, -0.026],
    ("2", "paper − ntp-fim", "x-file in-file"): [-0.001, -0.002, -0.002, +0.008, -0.021],
    ("2", "paper − ntp-fim", "x-file BM25"): [-0.002, -0.007, +0.000, +0.009, -0.025],
}
PRIMARY = {
    ("2", "ntp-fim − ntp", "files"),
    ("2", "ntp-fim − ntp", "FIM middles, PSM"),
    ("2", "paper − paper-fim", "FIM middles, PSM"),
    ("2", "paper − paper-random-order", "x-file in-file"),
}
REPOSITORY_HALF = {
    "FIM": 0.0107,
    "files": 0.0147,
    "x-file": 0.0190,
}  # runs/ablate-ctx, one seed, 19/14/17 repositories


def main() -> None:
    print(
        "| run | A − B | measure | seeds | mean | 95% interval (t over seeds) | verdict | with the repository term | "
        "power at 0.02 | seeds for 80% | detectable at 80% |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (run, comp, measure), xs in ROWS.items():
        x = np.asarray(xs)
        k = len(x)
        got = paired_interval(x[None, :], np.ones(1), np.zeros(1))  # one pooled "item": the seed term only
        sd = got.seed_sd
        item_se = REPOSITORY_HALF[next(p for p in REPOSITORY_HALF if measure.startswith(p))] / stats.t.ppf(
            0.975, 19
        )
        seed_var = sd**2 / k
        se = np.sqrt(seed_var + item_se**2)
        df = k - 1 if seed_var >= item_se**2 else se**4 / (seed_var**2 / (k - 1) + item_se**4 / 19)
        half = stats.t.ppf(0.975, df) * se
        wide = verdict(got.mean - half, got.mean + half)
        detect = optimize.brentq(
            lambda m, sd=sd, k=k: power(sd, k, margin=m) - 0.8, 1e-4, 30 * sd / np.sqrt(k)
        )
        name = f"**{comp}** (primary)" if (run, comp, measure) in PRIMARY else comp
        v = verdict(got.low, got.high)
        print(
            f"| {run} | {name} | {measure} | {k} | {got.mean:+.4f} | [{got.low:+.4f}, {got.high:+.4f}] | {v} | "
            f"[{got.mean - half:+.3f}, {got.mean + half:+.3f}]{'' if wide == v else ': ' + wide} | "
            f"{power(sd, k):.2f} | {seeds_for(sd) or '>200'} | {detect:.3f} |"
        )
    print(f"\n{len(ROWS)} intervals; {len(PRIMARY)} primary.")
    for run, comp, measure in sorted(PRIMARY):  # Bonferroni over the four primaries: 98.75% intervals
        x = np.asarray(ROWS[run, comp, measure])
        got = paired_interval(x[None, :], np.ones(1), np.zeros(1), level=1 - 0.05 / len(PRIMARY))
        print(f"Bonferroni {comp}, {measure}: [{got.low:+.4f}, {got.high:+.4f}] {verdict(got.low, got.high)}")


if __name__ == "__main__":
    main()
