"""Where a stream shard stands: enough to rebuild it exactly (the current unit's documents are
recomputed, not stored). `to_dict` is the JSON a checkpoint holds (`data-shard-S.json`), the same
keys as before the cursor was typed, so older checkpoints load."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class UnitCursor:
    """The position inside the unit being packed."""

    source: str  # "code" or "text"
    unit: int
    epoch: int
    doc: int = 0  # entry of the unit's plan (a file, or a text row)
    part: int = 0  # document of that entry's group (a FIM file's spills, `fim_layouts: both`)
    offset: int = 0  # tokens of that document packed so far (or of its prefix, spilled as NTP)
    char: int = 0  # context level: where the rest of a file cut in pieces starts
    ntp: bool = False  # context level: the file's next line is longer than a window and goes as NTP


@dataclass
class StreamCursor:
    """Per source: units taken this epoch, the epoch, tokens emitted (what interleaves text and
    code); and the unit being packed, if any."""

    pos: dict[str, int] = field(default_factory=dict)
    epoch: dict[str, int] = field(default_factory=dict)
    emitted: dict[str, int] = field(default_factory=dict)
    current: UnitCursor | None = None

    @classmethod
    def start(cls, sources: list[str]) -> StreamCursor:
        return cls(dict.fromkeys(sources, 0), dict.fromkeys(sources, 0), dict.fromkeys(sources, 0))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> StreamCursor:
        """A cursor from `to_dict`'s JSON (a unit cursor of older checkpoints may lack char and ntp)."""
        current = state["current"]
        return cls(
            dict(state["pos"]),
            dict(state["epoch"]),
            dict(state["emitted"]),
            UnitCursor(**current) if current else None,
        )
