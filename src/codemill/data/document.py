"""The stream's document: what the stream builds and packs, and its statistics count."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from codemill.data.objectives import Sample
from codemill.data.repo import SourceFile
from codemill.formats import Part


@dataclass
class TokenDoc:
    """A document as the stream packs it: its tokens, its objective and where they came from."""

    ids: np.ndarray  # int32
    objective: str
    splittable: bool
    path: str | None = None
    sample: Sample | None = None
    strategy: str | None = None
    parts: list[Part] = field(default_factory=list)
    # FIM documents: tokens before the first sentinel, and where the prefix's tokens lie in `ids`
    opening: int = 0
    prefix_at: int = 0
    prefix_len: int = 0
    frame: int = 0  # tokens that are not file content: specials, path, header
    # code files, for context-level objectives: the file, its random key and the objective drawn for it
    file: SourceFile | None = None
    key: tuple = ()
    drawn: str = ""
    context: bool = False  # a file laid out as repository context for the next (`repo_context`)

    def without_head(self, n: int) -> np.ndarray:
        """The document with the first n tokens of its prefix moved out (spilled as NTP before it)."""
        return np.concatenate([self.ids[: self.prefix_at], self.ids[self.prefix_at + n :]]) if n else self.ids

    def head(self, start: int, n: int) -> np.ndarray:
        """The file's opening and prefix tokens [start, start + n): what a spill puts before it."""
        at = self.prefix_at + start
        return np.concatenate([self.ids[: self.opening], self.ids[at : at + n]])
