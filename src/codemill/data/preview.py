"""`codemill data preview`: training documents as the model sees them, segment by segment in colour."""

from __future__ import annotations

import difflib

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from codemill.data.document import TokenDoc
from codemill.data.stream import TrainingStream
from codemill.errors import UserError

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


def render(doc: TokenDoc, limit: int = 600) -> Text:
    out = Text()
    for part in doc.parts:
        text = part.text if part.role == "special" else _clip(part.text, part.role, limit)
        out.append(text, style=STYLES[part.role])
    return out


def title(doc: TokenDoc, sfim_policy: str) -> str:
    s = doc.sample
    what = s.objective.upper()
    if s.suffix is not None:
        what += " " + ("SPM" if s.spm else "PSM")
    if s.node:
        what += f", {sfim_policy} rule, node {s.node}"
    if s.fallback:
        what += f" (fallback: {s.fallback})"
    return f"{doc.path}  ·  {what}  ·  ordering: {doc.strategy}  ·  {len(doc.ids)} tokens"


def find_repo(name: str, repos: list[str]) -> str:
    """The repository named exactly, or the one whose name without its version matches
    (`numpy` for `numpy-2.4.6`); otherwise an error naming the closest names."""
    if name in repos:
        return name
    unversioned = [r for r in repos if r.rsplit("-", 1)[0] == name or r.rsplit("@", 1)[0] == name]
    if len(unversioned) == 1:
        return unversioned[0]
    close = unversioned or difflib.get_close_matches(name, repos, n=5, cutoff=0.5)
    some = ", ".join(sorted(repos)[:6]) + (", ..." if len(repos) > 6 else "")
    hint = f"; did you mean {', '.join(close)}?" if close else f"; its {len(repos)} repositories: {some}"
    raise UserError(f"no repository {name!r} in the corpus{hint}")


def preview(stream: TrainingStream, console: Console, docs: int, limit: int, repo: str | None = None) -> None:
    """The first `docs` file documents of the stream (or of one repository), with a colour legend."""
    legend = Text("legend: ")
    for role, style in STYLES.items():
        legend.append(f"{role} ", style=style)
    console.print(legend)
    corpus = stream.sources["code"]
    units = stream.units("code", 0)
    if repo is not None:
        units = [corpus.repos.index(find_repo(repo, corpus.repos))]
    shown, unit = 0, 0
    while shown < docs and unit < len(units):
        plan = stream.plan("code", units[unit], 0)
        for make in plan:
            for doc in (d for group in stream.docs.encode(make()) for d in group):
                if doc.sample is None:
                    continue  # repository metadata, spilled context
                console.print(
                    Panel(render(doc, limit), title=title(doc, stream.cfg.sfim_policy), title_align="left")
                )
                shown += 1
            if shown >= docs:
                break
        unit += 1
