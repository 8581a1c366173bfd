"""Recipe sections as dataclasses: the paper's values as defaults, every one overridable."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

from codemill.errors import UserError


class Settings:
    """Mixin for a recipe section: strict `from_dict` (unknown keys are errors) and `to_dict`."""

    section: ClassVar[str]

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Self:
        d = dict(d or {})
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(types))
        if unknown:
            raise UserError(f"unknown {cls.section} settings {unknown}; known: {sorted(types)}")
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(v)
            elif isinstance(v, str) and types[k].split(" |")[0] in ("float", "int"):
                # YAML reads 3e-3 (no dot) as a string
                try:
                    d[k] = float(v) if types[k].startswith("float") else int(v)
                except ValueError:
                    raise UserError(f"{cls.section}.{k}: expected a number, got {v!r}") from None
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
