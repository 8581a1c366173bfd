"""`codemill corpus audit`: a page for a person to review before training on a corpus.

Curation removes files for many reasons and rewrites PII in what it keeps; counts alone do not say
whether a filter removed good code or a redaction broke it. The page samples up to N dropped files
per reason (from drops.parquet: the stage, the detail and the excerpt the ledger kept) and up to N
redactions per PII tag (the tags found in kept files whose `pii` count is non-zero, with the lines
around them), next to the counts of every reason and tag, drawn as PNGs beside the page.

Samples are a deterministic bottom-k by a keyed hash of repository and path, so memory stays bounded
by N whatever the corpus size and the same seed shows the same files.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from codemill.curate.corpus import shards
from codemill.errors import UserError
from codemill.formats import PII_TAGS

TAG = re.compile(r"<(" + "|".join(PII_TAGS) + r")>")
CONTEXT_LINES = 2  # lines shown above and below a redacted line
FENCE_LANG = {".py": "python", ".js": "javascript", ".ts": "typescript", ".c": "c", ".h": "c", ".cc": "cpp",
              ".cpp": "cpp", ".hpp": "cpp", ".java": "java", ".go": "go", ".rs": "rust", ".cs": "csharp"}  # fmt: skip


@dataclass
class Audit:
    page: Path
    charts: list[Path]
    drops: dict[str, int]  # "stage / reason" -> files, in the flow's order
    redactions: dict[str, int]  # tag -> replacements (the manifest's count)
    sampled_drops: int = 0
    sampled_redactions: int = 0
    reasons: list[str] = field(default_factory=list)


def _key(seed: int, *parts: str) -> int:
    return int.from_bytes(
        hashlib.blake2b("\0".join((str(seed), *parts)).encode(), digest_size=8).digest(), "big"
    )


class _BottomK:
    """The k items with the smallest keys seen so far (a heap of the negated keys)."""

    def __init__(self, k: int):
        self.k, self.heap = k, []

    def add(self, key: int, item) -> None:
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, (-key, id(item), item))
        elif -self.heap[0][0] > key:
            heapq.heapreplace(self.heap, (-key, id(item), item))

    def items(self) -> list:
        return [item for _, _, item in sorted(self.heap, key=lambda t: -t[0])]


def _fence(text: str, path: str) -> str:
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    lang = FENCE_LANG.get(Path(path).suffix.lower(), "")
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def _drop_samples(corpus: Path, n: int, seed: int) -> dict[tuple[str, str], list[dict]]:
    import pyarrow.parquet as pq

    path = corpus / "drops.parquet"
    samples: dict[tuple[str, str], _BottomK] = {}
    if not path.exists():
        return {}
    cols = ["stage", "reason", "repo", "path", "bytes", "detail", "excerpt"]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=cols):
        for r in batch.to_pylist():
            key = (r["stage"], r["reason"])
            samples.setdefault(key, _BottomK(n)).add(_key(seed, r["repo"], r["path"]), r)
    return {k: s.items() for k, s in samples.items()}


def _redaction_samples(corpus: Path, n: int, seed: int) -> dict[str, list[dict]]:
    """Per tag, up to n occurrences in kept files that were redacted, with the lines around them."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    samples = {t: _BottomK(n) for t in PII_TAGS}
    for shard in shards(corpus):
        f = pq.ParquetFile(shard)
        if "pii" not in f.schema_arrow.names:
            continue
        for batch in f.iter_batches(batch_size=512, columns=["repo", "path", "content", "pii"]):
            batch = batch.filter(pc.greater(batch.column("pii"), 0))
            for r in batch.to_pylist():
                lines = r["content"].splitlines()
                for i, line in enumerate(lines):
                    for m in TAG.finditer(line):
                        k = _key(seed, r["repo"], r["path"], str(i), str(m.start()))
                        lo, hi = max(0, i - CONTEXT_LINES), min(len(lines), i + CONTEXT_LINES + 1)
                        item = {"repo": r["repo"], "path": r["path"], "line": i + 1, "tag": m.group(1),
                                "context": lines[lo:hi], "at": i - lo}  # fmt: skip
                        samples[m.group(1)].add(k, item)
    return {t: s.items() for t, s in samples.items() if s.heap}


def _chart(counts: dict[str, int], title: str, xlabel: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(counts.items(), key=lambda kv: kv[1])[-40:]
    fig, ax = plt.subplots(figsize=(9, 0.32 * max(len(items), 3) + 1.4), dpi=110)
    labels, values = [k for k, _ in items], [v for _, v in items]
    bars = ax.barh(range(len(items)), values, color="#4c72b0")
    ax.set_yticks(range(len(items)), labels, fontsize=8)
    for b, v in zip(bars, values, strict=True):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v:,}", va="center", fontsize=7)
    if values and max(values) > 50 * max(1, min(values)):
        ax.set_xscale("log")
        ax.set_xlim(left=0.5)  # a count of 1 still shows a bar
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def audit(corpus: Path, per_reason: int = 5, out: Path | None = None, seed: int = 0) -> Audit:
    """Write the review page (default CORPUS/audit.md) and its charts beside it."""
    corpus = Path(corpus)
    manifest_path = corpus / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(
            f"{corpus} is not a curated corpus (no manifest.json); run `codemill curate SOURCES --out {corpus}` first"
        )
    if per_reason < 1:
        raise UserError(f"--per-reason {per_reason}: give at least 1")
    try:
        manifest = json.loads(manifest_path.read_text())
        stages = manifest["stages"]
    except (ValueError, KeyError) as e:
        raise UserError(f"{manifest_path} is not a codemill corpus manifest ({e})") from e
    page = Path(out) if out else corpus / "audit.md"
    if page.suffix.lower() != ".md":
        raise UserError(
            f"--out {page}: give a Markdown file name (PAGE.md); the charts are written beside it"
        )
    page.parent.mkdir(parents=True, exist_ok=True)

    drops = {(s, r): n for s, st in stages.items() for r, n in st.get("drops", {}).items() if n}
    from codemill.curate.checks import STAGES

    order = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES]
    ranked = sorted(drops, key=lambda k: (order.index(k[0]), -drops[k], k[1]))
    redactions = {t: n for t, n in (manifest.get("pii_replacements") or {}).items() if n}
    drop_samples = _drop_samples(corpus, per_reason, seed)
    pii_samples = _redaction_samples(corpus, per_reason, seed)

    charts = []
    stem = page.with_suffix("")
    if drops:
        charts.append(_chart({f"{s} / {r}": n for (s, r), n in drops.items()}, "files dropped per reason",
                             "files", stem.with_name(stem.name + "-drops.png")))  # fmt: skip
    if redactions:
        charts.append(_chart(redactions, "PII replacements per tag", "replacements",
                             stem.with_name(stem.name + "-pii.png")))  # fmt: skip

    files_in = stages[order[0]]["files_in"] if order else 0
    files_out = manifest.get("files", {}).get("out", 0)
    md = [
        f"# Curation audit: {corpus.name}",
        "",
        f"Sources: {', '.join(map(str, manifest.get('sources', [])))}. {files_in:,} files in, {files_out:,} kept, "
        f"{sum(drops.values()):,} dropped for {len(drops)} reasons; "
        f"{sum(redactions.values()):,} PII replacements. Up to {per_reason} samples per reason and per tag "
        f"(seed {seed}); review them before training: a reason whose samples are good code, or a "
        "redaction that is not personal data, is a filter to fix or turn off.",
        "",
    ]
    md += [f"![{c.stem}]({c.name})" for c in charts] + [""]
    md += ["## Drops per reason", "", "| stage | reason | files | share of files in |", "|---|---|---:|---:|"]
    for s, r in ranked:
        md.append(
            f"| {s} | [{r}](#{_anchor(s, r)}) | {drops[(s, r)]:,} | {drops[(s, r)] / max(files_in, 1):.2%} |"
        )
    md.append("")
    sampled = 0
    for s, r in ranked:
        rows = drop_samples.get((s, r), [])
        md += [
            f'<a id="{_anchor(s, r)}"></a>',
            "",
            f"### {s} / {r} ({drops[(s, r)]:,} files, {len(rows)} shown)",
            "",
        ]
        for row in rows:
            sampled += 1
            detail = f": {row['detail']}" if row.get("detail") else ""
            md.append(f"- `{row['repo']}/{row['path']}` ({row['bytes']:,} bytes){detail}")
            excerpt = row.get("excerpt") or ""
            md += [
                "",
                _fence(excerpt, row["path"])
                if excerpt.strip()
                else "  (no excerpt: dropped before it was read)",
                "",
            ]
        md.append("")
    md += ["## PII redactions", ""]
    if redactions:
        md += (
            ["| tag | replacements |", "|---|---:|"]
            + [f"| {t} | {n:,} |" for t, n in redactions.items()]
            + [""]
        )
    else:
        md += ["No replacements.", ""]
    shown = 0
    for tag in PII_TAGS:
        rows = pii_samples.get(tag, [])
        if not rows:
            continue
        md += [f"### <{tag}> ({redactions.get(tag, 0):,} replacements, {len(rows)} shown)", ""]
        for row in rows:
            shown += 1
            ctx = [(">> " if i == row["at"] else "   ") + line for i, line in enumerate(row["context"])]
            md += [f"- `{row['repo']}/{row['path']}` line {row['line']}", "", _fence("\n".join(ctx), ""), ""]
    page.write_text("\n".join(md) + "\n")
    return Audit(page, charts, {f"{s} / {r}": drops[(s, r)] for s, r in ranked}, redactions, sampled, shown,
                 [r for _, r in ranked])  # fmt: skip


def _anchor(stage: str, reason: str) -> str:
    return "drop-" + re.sub(r"[^a-z0-9]+", "-", f"{stage}-{reason}".lower()).strip("-")
