"""What the syntax-aware stop would do to FIM answers, measured on a FIM-Eval-shaped benchmark.

Two oracles stand in for a model whose answer is right: the reference middle alone (is it ever cut
short, at an earlier line end where the file already parses?) and the reference followed by the
suffix's next lines, as a model that runs past the middle would write (does the stop bring it back to
exactly the reference?). Per task type, pooled over languages.

    python benchmarks/bench_syntax_stop.py runs/ablate-cpu/shared/bench/fim
"""

from __future__ import annotations

import sys
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from codemill.eval.suites import fim_eval
from codemill.stops import syntax_stop


def main(root: str) -> None:
    rows: dict[str, list[tuple[bool, bool, bool]]] = defaultdict(list)
    for task in fim_eval(root):
        r = task.request
        pre, mid, suf = r.prefix, r.reference, r.suffix
        cut = syntax_stop(pre, suf, r.path)
        if cut is None:
            continue
        alone = cut(mid)
        kept = alone == -1 or mid[:alone].strip() == mid.strip()
        overrun = mid + suf[:300]
        at = syntax_stop(pre, suf, r.path)(overrun)
        recovered = at != -1 and overrun[:at].strip() == mid.strip()
        rows[r.meta["task_type"]].append((kept, recovered, at == -1))
    table = Table(title=f"syntax-aware stop on {root}")
    for col in (
        "task type",
        "tasks",
        "reference kept whole %",
        "overrun cut back to the reference %",
        "overrun never cut %",
    ):
        table.add_column(col, justify="left" if col == "task type" else "right")
    everything = [x for v in rows.values() for x in v]
    for name, xs in [*sorted(rows.items()), ("all", everything)]:
        pct = [100 * sum(x[i] for x in xs) / len(xs) for i in range(3)]
        table.add_row(name, str(len(xs)), *(f"{p:.0f}" for p in pct))
    Console().print(table)


if __name__ == "__main__":
    main(sys.argv[1])
