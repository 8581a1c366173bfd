"""The summary table of a corpus, printed at the end of `curate` and by `corpus stats`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from codemill.curate.checks import STAGES
from codemill.curate.corpus import shards


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def summary(manifest: dict) -> Table:
    t = Table(title=f"codemill curate: {', '.join(manifest['sources'])}", title_justify="left")
    for col in ("stage", "files in", "MB in", "files out", "MB out", "dropped by reason"):
        t.add_column(col, justify="left" if col in ("stage", "dropped by reason") else "right")
    for name in STAGES:  # manifest.json stores keys sorted; show the flow's order
        s = manifest["stages"][name]
        top = sorted(s["drops"].items(), key=lambda kv: -kv[1])
        drops = ", ".join(f"{k} {v:,}" for k, v in top[:3]) + (
            f" (+{len(top) - 3} more)" if len(top) > 3 else ""
        )
        t.add_row(
            name, f"{s['files_in']:,}", _mb(s["bytes_in"]), f"{s['files_out']:,}", _mb(s["bytes_out"]), drops
        )
    r = manifest["repositories"]
    pii = ", ".join(f"{k} {v:,}" for k, v in manifest["pii_replacements"].items()) or "none"
    t.caption = (
        f"repositories: {r['in']:,} in, {r['not_permissive']:,} not permissive, {r['score_cut']:,} cut by score, "
        f"{r['with_kept_files']:,} with kept files | corpus: {manifest['files']['out']:,} files, "
        f"{_mb(manifest['files']['bytes_out'])} MB | PII replaced: {pii} | {manifest['seconds']:.0f} s"
    )
    return t


def print_stats(corpus: Path, examples: int = 2, console: Console | None = None) -> None:
    """Summary table, languages, and a few dropped files per reason with an excerpt."""
    console = console or Console()
    manifest = json.loads((corpus / "manifest.json").read_text())
    console.print(summary(manifest))
    langs = Table(title="languages kept", title_justify="left")
    for col in ("language", "files", "MB"):
        langs.add_column(col, justify="right" if col != "language" else "left")
    counts: dict[str, list[int]] = {}
    for p in shards(corpus):
        t = pq.read_table(p, columns=["lang", "size"])
        for lang, size in zip(t.column("lang").to_pylist(), t.column("size").to_pylist(), strict=True):
            c = counts.setdefault(lang, [0, 0])
            c[0] += 1
            c[1] += size
    for lang, (n, b) in sorted(counts.items(), key=lambda kv: -kv[1][1]):
        langs.add_row(lang, f"{n:,}", _mb(b))
    console.print(langs)
    drops_path = corpus / "drops.parquet"
    if not examples or not drops_path.exists():
        return
    drops = pq.read_table(drops_path)
    for stage in STAGES:
        sd = drops.filter(pc.equal(drops["stage"], stage))
        for reason in sorted(set(sd.column("reason").to_pylist())):
            rows = sd.filter(pc.equal(sd["reason"], reason)).slice(0, examples).to_pylist()
            console.rule(f"{stage} / {reason}")
            for r in rows:
                console.print(
                    f"[bold]{r['repo']}/{r['path']}[/bold] {r['detail']}", markup=True, highlight=False
                )
                if r["excerpt"]:
                    console.print(
                        "    " + r["excerpt"][:240].replace("\n", "\n    "), markup=False, highlight=False
                    )
