"""Telemetry of a training stream: what `codemill data stats` prints and the benchmark records."""

from __future__ import annotations

from collections import Counter

import numpy as np
from rich.table import Table

from codemill.data.document import TokenDoc
from codemill.data.objectives import Objective

PAD = Objective.PADDING.label


class StreamStats:
    def __init__(self):
        self.strategies: Counter[str] = Counter()
        self.objectives: Counter[str] = Counter()
        self.layouts: Counter[tuple[str, str]] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.nodes: Counter[str] = Counter()
        self.middle_bytes: list[int] = []
        self.middle_lines: list[int] = []
        self.doc_tokens: list[int] = []
        self.token_objective: Counter[str] = Counter()
        self.files = self.docs = self.repos = self.windows = 0

    def repo(self, strategy: str) -> None:
        self.strategies[strategy] += 1
        self.repos += 1

    def doc(self, d: TokenDoc, continued: bool = False) -> None:
        """A document packed; `continued`: a later piece of a file cut at context level."""
        if d.sample is None:  # repository metadata
            return
        s = d.sample
        self.files += not continued
        self.docs += 1
        self.objectives[d.objective] += 1
        self.doc_tokens.append(len(d.ids))
        if s.fallback:
            self.fallbacks[s.fallback] += 1
        if d.context:
            self.events["repo_context_file"] += 1
        if s.suffix is not None:
            self.layouts[(s.objective, "SPM" if s.spm else "PSM")] += 1
        if s.objective == "sfim":
            self.nodes[s.node] += 1
            self.middle_bytes.append(len(s.middle.encode()))
            self.middle_lines.append(s.middle.count("\n") + 1)

    def count(self, event: str) -> None:
        self.events[event] += 1

    def window(self, objective: np.ndarray) -> None:
        self.windows += 1
        for code, n in zip(*np.unique(objective, return_counts=True), strict=True):
            self.token_objective[Objective(int(code)).label] += int(n)

    def summary(self) -> dict:
        """Plain numbers, for JSON and tests."""
        total = sum(self.token_objective.values())
        pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None  # noqa: E731
        return {
            "repos": self.repos,
            "files": self.files,
            "documents": self.docs,
            "windows": self.windows,
            "strategies": dict(self.strategies),
            "objectives": dict(self.objectives),
            "layouts": {f"{o}/{lay}": n for (o, lay), n in sorted(self.layouts.items())},
            "fallbacks": dict(self.fallbacks),
            "events": dict(self.events),
            "padding_fraction": self.token_objective[PAD] / total if total else 0.0,
            "tokens_by_objective": dict(self.token_objective),
            "sfim_middle_bytes": {q: pct(self.middle_bytes, q) for q in (10, 50, 90)},
            "sfim_middle_lines": {q: pct(self.middle_lines, q) for q in (10, 50, 90)},
            "tokens_per_file": {q: pct(self.doc_tokens, q) for q in (10, 50, 90)},
            "sfim_nodes": dict(self.nodes.most_common(10)),
        }

    def tables(self) -> list[Table]:
        s = self.summary()
        docs = max(self.docs, 1)
        mix = Table(
            title=f"objective mix ({self.files} files, {self.docs} documents, in {self.repos} repositories, "
            f"{self.windows} windows)"
        )
        loss = sum(v for k, v in self.token_objective.items() if k != PAD) or 1
        for col in ("objective", "documents", "share", "PSM", "SPM", "tokens", "share of loss tokens"):
            mix.add_column(col, justify="left" if col == "objective" else "right")
        for o in ("sfim", "fim", "ntp"):
            n = self.objectives[o]
            psm, spm = self.layouts[(o, "PSM")], self.layouts[(o, "SPM")]
            lay = (
                [f"{psm / max(psm + spm, 1):.0%}", f"{spm / max(psm + spm, 1):.0%}"]
                if o != "ntp"
                else ["", ""]
            )
            t = self.token_objective[o]
            mix.add_row(o, str(n), f"{n / docs:.1%}", *lay, f"{t:,}", f"{t / loss:.1%}")
        mix.add_row(
            PAD,
            "",
            "",
            "",
            "",
            f"{self.token_objective[PAD]:,} ({s['padding_fraction']:.1%})",
            "",
        )

        dist = Table(title="lengths (p10 / p50 / p90)")
        dist.add_column("quantity")
        dist.add_column("p10 / p50 / p90", justify="right")
        for name, key in (
            ("SFIM middle, bytes", "sfim_middle_bytes"),
            ("SFIM middle, lines", "sfim_middle_lines"),
            ("tokens per file", "tokens_per_file"),
        ):
            q = s[key]
            dist.add_row(name, " / ".join("-" if q[k] is None else f"{q[k]:,.0f}" for k in (10, 50, 90)))

        other = Table(title="ordering strategies, fallbacks and events")
        other.add_column("what")
        other.add_column("count", justify="right")
        for k, n in sorted(self.strategies.items()):
            other.add_row(f"ordering: {k}", f"{n} ({n / max(self.repos, 1):.0%} of repositories)")
        for k, n in sorted(self.fallbacks.items()):
            other.add_row(f"SFIM fallback: {k}", f"{n} ({n / docs:.1%} of documents)")
        for k, n in sorted(self.events.items()):
            other.add_row(k.replace("_", " "), str(n))
        for k, n in self.nodes.most_common(5):
            other.add_row(f"SFIM node: {k}", str(n))
        return [mix, dist, other]
