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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown {cls.section} settings {unknown}; known: {sorted(names)}")
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(v)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
