"""Rebuild an ablation's tables from runs already done, without training: means over seeds, the
reference rows (untrained, unigram, gzip / xz; scored once into OUT/references) and the paired
intervals with verdicts and power (flow/ablate.py, flow/stats.py).

    python benchmarks/ablate_tables.py runs/ablate-ctx --variants paper,paper-repo-context --seeds 0
"""

import argparse
import json
from pathlib import Path

from codemill.flow.ablate import heldout_files, paired_table, reference_table, references, seeds_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the ablation's --out")
    ap.add_argument("--variants", required=True)
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--shared", type=Path, help="its --shared (default OUT/shared)")
    a = ap.parse_args()
    names, shared = a.variants.split(","), a.shared or a.out / "shared"
    dirs = [a.out / f"seed{s}" for s in a.seeds.split(",")]
    first = dirs[0] / names[0]
    n = len(json.loads((first / "eval" / "fim-loss" / "results.json").read_text())["files"])
    files, repos = heldout_files(shared, n)
    refs = references(shared, first / "train" / "final", a.out / "references", files)
    print(seeds_table(dirs, names) + "\n" + reference_table(refs) + "\n" + paired_table(dirs, names, repos))


if __name__ == "__main__":
    main()
