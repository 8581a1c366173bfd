"""`codemill data preview`: training documents as the model sees them, segment by segment in colour."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from codemill.data.stream import Doc, TrainingStream

STYLES = {
    "special": "bold magenta",
    "meta": "dim",
    "header": "dim italic",
    "prefix": "green",
    "suffix": "cyan",
    "middle": "bold yellow",
    "body": "default",
}


def _clip(text: str, role: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if role == "prefix":  # what matters is next to the middle
        return "…" + text[-limit:]
    return text[:limit] + "…"


def render(doc: Doc, limit: int = 600) -> Text:
    out = Text()
    for part in doc.parts:
        text = part.text if part.role == "special" else _clip(part.text, part.role, limit)
        out.append(text, style=STYLES[part.role])
    return out


def title(doc: Doc, sfim_policy: str) -> str:
    s = doc.sample
    what = s.objective.upper()
    if s.suffix is not None:
        what += " " + ("SPM" if s.spm else "PSM")
    if s.node:
        what += f", {sfim_policy} rule, node {s.node}"
    if s.fallback:
        what += f" (fallback: {s.fallback})"
    return f"{doc.path}  ·  {what}  ·  ordering: {doc.strategy}  ·  {len(doc.ids)} tokens"


def preview(stream: TrainingStream, console: Console, docs: int, limit: int, repo: str | None = None) -> None:
    """The first `docs` file documents of the stream (or of one repository), with a colour legend."""
    legend = Text("legend: ")
    for role, style in STYLES.items():
        legend.append(f"{role} ", style=style)
    console.print(legend)
    corpus = stream.sources["code"]
    units = stream.units["code"]
    if repo is not None:
        if repo not in corpus.repos:
            raise ValueError(f"no repository {repo!r} in the corpus; `codemill corpus stats` lists them")
        units = [corpus.repos.index(repo)]
    shown, unit = 0, 0
    while shown < docs and unit < len(units):
        plan = stream.plan("code", units[unit], 0)
        for make in plan:
            for doc in (d for group in stream.encode(make()) for d in group):
                if doc.sample is None:
                    continue  # repository metadata, spilled context
                console.print(
                    Panel(render(doc, limit), title=title(doc, stream.cfg.sfim_policy), title_align="left")
                )
                shown += 1
            if shown >= docs:
                break
        unit += 1
