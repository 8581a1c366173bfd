"""Recipe sections as dataclasses: the paper's values as defaults, every one overridable.

A recipe is a YAML mapping of the sections below (`load_recipe`); `--set key=value` overrides a
setting (`parse_overrides`). `Settings.from_dict` refuses unknown keys, values of the wrong type and
values outside the bounds named next to each field (`positive`, `at_least`, `fraction`), so a wrong
setting is reported where it is given rather than as a crash inside a stage.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml

from codemill.errors import UserError

SECTIONS = ("curate", "data", "train", "run")  # what a recipe holds; `codemill run` reads them all


def positive(default):
    """A number that must be above 0 (an int: at least 1)."""
    return dataclasses.field(default=default, metadata={"above": 0})


def at_least(low, default):
    return dataclasses.field(default=default, metadata={"min": low})


def fraction(default):
    """A share or probability: from 0 to 1."""
    return dataclasses.field(default=default, metadata={"min": 0, "max": 1})


def _did_you_mean(names, known) -> str:
    """' (did you mean train?)' when the first of `names` is close to one of `known`."""
    close = difflib.get_close_matches(str(sorted(names, key=str)[0]), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _kind(value) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(value), repr(value))


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong, where, and what it was reading."""
    at = lambda mark: f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""  # noqa: E731
    problem = (getattr(e, "problem", None) or str(e).splitlines()[0]) + at(getattr(e, "problem_mark", None))
    if context := getattr(e, "context", None):
        problem += f", {context}{at(getattr(e, 'context_mark', None))}"
    return problem


def load_recipe(path: str | Path) -> dict[str, dict]:
    """A recipe file's sections, each a mapping ({} when absent), or a UserError naming the file: a
    path that cannot be read, malformed YAML, a document that is not a mapping of known sections."""
    path = Path(path)
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise UserError(
            f"recipe {path}: cannot read it ({why}); give a YAML file such as recipes/demo.yaml"
        ) from None
    except yaml.YAMLError as e:
        raise UserError(f"recipe {path} is not valid YAML: {_yaml_problem(e)}") from None
    recipe = {} if recipe is None else recipe
    if not isinstance(recipe, dict):
        raise UserError(
            f"recipe {path} holds {_kind(recipe)}, not a mapping of sections; write `section:` lines "
            f"({', '.join(SECTIONS)}) with their settings indented below"
        )
    if unknown := set(recipe) - set(SECTIONS):
        names = ", ".join(repr(n) for n in sorted(unknown, key=str))
        raise UserError(
            f"recipe {path}: unknown section {names}{_did_you_mean(unknown, SECTIONS)}; "
            f"known: {', '.join(SECTIONS)}"
        )
    for name, section in recipe.items():
        if section is not None and not isinstance(section, dict):
            raise UserError(
                f"recipe {path}: section {name} holds {_kind(section)}, not a mapping of settings "
                f"(`key: value` lines indented under `{name}:`)"
            )
    return {name: recipe.get(name) or {} for name in SECTIONS}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set key=value` items as {key: value read as YAML}; an item without `key=` is an error."""
    given = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--set {item!r}: write key=value, e.g. --set max_steps=200")
        try:
            given[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UserError(
                f"--set {item!r}: the value is not valid YAML ({_yaml_problem(e)}); quote it"
            ) from None
    return given


class Settings:
    """Mixin for a recipe section: strict `from_dict` (unknown keys, wrong types and values out of
    their field's bounds are errors) and `to_dict`."""

    section: ClassVar[str]

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Self:
        d = dict(d or {})
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        if unknown := set(d) - set(types):
            hint = _did_you_mean(unknown, types)
            raise UserError(
                f"unknown {cls.section} settings {sorted(map(str, unknown))}{hint}; known: {sorted(types)}"
            )
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(v)
            elif (kind := types[k].split(" |")[0]) in ("float", "int"):
                d[k] = _number(f"{cls.section}.{k}", v, kind, optional="None" in types[k])
        cfg = cls(**d)
        cfg.check()
        return cfg

    def check(self) -> None:
        """The bounds named next to the fields (`positive`, `at_least`, `fraction`)."""
        for f in dataclasses.fields(self):
            value, m = getattr(self, f.name), f.metadata
            if value is None or not m:
                continue
            if "above" in m and not value > m["above"]:
                whole = str(f.type).startswith("int")
                must = f"at least {m['above'] + 1}" if whole else f"above {m['above']}"
            elif "min" in m and value < m["min"]:
                must = f"at least {m['min']}"
            elif "max" in m and value > m["max"]:
                must = f"at most {m['max']}"
            else:
                continue
            raise UserError(f"{self.section}.{f.name} is {value}; it must be {must}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _number(name: str, v, kind: str, optional: bool):
    """`v` as the int or float a field holds (YAML reads 3e-3 and 1e3, without a dot, as strings)."""
    if v is None and optional:
        return v
    if isinstance(v, str):
        try:
            v = int(v) if kind == "int" and v.strip().lstrip("+-").isdigit() else float(v)
        except ValueError:
            raise UserError(f"{name}: expected a number, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise UserError(f"{name}: expected a number, got {v!r}")
    if kind == "int" and isinstance(v, float):
        if not v.is_integer():
            raise UserError(f"{name}: expected a whole number, got {v}")
        v = int(v)
    return v
