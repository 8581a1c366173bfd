"""Static analysis: real analyzers behind one interface, defects graded like SonarQube's severities.

aiXcoder ran SonarQube (161 bug and 197 vulnerability types). No SonarQube runs in-process, so the
Python analyzer is ruff (pyflakes, pylint-error, bugbear and bandit rules), run once per batch of
files. Each rule is mapped to a SonarQube category (bug / vulnerability) and severity; files with a
defect of a configured severity are dropped. Other languages plug in through `Analyzer`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from codemill.errors import UserError

# rule code prefix -> (SonarQube category, severity)
RUFF_RULES: dict[str, tuple[str, str]] = {
    **{c: ("bug", "blocker") for c in ("F821", "F822", "F823", "F701", "F702", "F704", "F706")},
    **{c: ("bug", "blocker") for c in ("PLE0117", "PLE0118", "PLE1142")},
    "PLE2502": ("vulnerability", "blocker"),  # bidirectional control characters (Trojan Source)
    **{f"F50{i}": ("bug", "critical") for i in range(2, 10)},
    **{f"F52{i}": ("bug", "critical") for i in range(1, 6)},
    **{c: ("bug", "critical") for c in ("F631", "F632", "PLE1205", "PLE1206", "PLE1307")},
    **{c: ("vulnerability", "critical") for c in ("S501", "S506", "S602", "S608", "S701")},
    **{c: ("bug", "major") for c in ("F601", "F602", "B006", "B015", "B018")},
    **{c: ("vulnerability", "major") for c in ("S102", "S307", "S105", "S106", "S107", "S324")},
    "S605": ("vulnerability", "major"),
    **{c: ("vulnerability", "minor") for c in ("S104", "S108", "S113", "S301", "S311")},
}


@dataclass(frozen=True)
class Defect:
    rule: str
    category: str
    severity: str
    line: int
    message: str


class Analyzer(Protocol):
    langs: tuple[str, ...]

    def analyze(self, files: list[tuple[str, str]]) -> list[list[Defect]]:
        """Defects per file for a batch of (path, text)."""


def _ruff_bin() -> str:
    exe = Path(sysconfig.get_path("scripts")) / "ruff"
    if exe.exists():
        return str(exe)
    from ruff.__main__ import find_ruff_bin

    return find_ruff_bin()


# How ruff names a file its parser rejects (older ruff: SyntaxError or E999).
SYNTAX_CODES = ("invalid-syntax", "SyntaxError", "E999")
SYNTAX_RULE = "invalid-syntax"


class Ruff:
    """Reports its parser's verdict with the defects (rule SYNTAX_RULE), so the syntax check can use it."""

    langs = ("Python",)

    def __init__(self, severities: tuple[str, ...]):
        # with nothing to report ruff still parses: F821 is the cheapest rule that keeps it running
        self.select = sorted(code for code, (_, sev) in RUFF_RULES.items() if sev in severities) or ["F821"]

    def analyze(self, files: list[tuple[str, str]]) -> list[list[Defect]]:
        out: list[list[Defect]] = [[] for _ in files]
        if not files:
            return out
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # memory: no disk writes per file
        with tempfile.TemporaryDirectory(prefix="codemill-ruff-", dir=shm) as tmp:
            names = []
            for i, (path, text) in enumerate(files):
                name = f"{i:06d}{'.pyi' if path.endswith('.pyi') else '.py'}"
                Path(tmp, name).write_text(text, encoding="utf-8")
                names.append(name)
            proc = subprocess.run(
                [
                    _ruff_bin(),
                    "check",
                    "--isolated",
                    "--no-cache",
                    "--exit-zero",
                    "--quiet",
                    "--output-format",
                    "concise",
                    "--target-version",
                    "py313",
                    "--select",
                    ",".join(self.select),
                    ".",
                ],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "RUFF_NO_CACHE": "true"},
            )
            if proc.returncode:
                print(proc.stderr, file=sys.stderr)
                raise UserError(f"ruff failed ({proc.returncode}); see its message above")
            for line in proc.stdout.splitlines():  # concise: parsing it is 5x cheaper than JSON
                name, row, _col, rest = line.split(":", 3)
                code, message = rest.strip().split(" ", 1)
                if code.rstrip(":") in SYNTAX_CODES:  # "invalid-syntax: ..." ("SyntaxError: ..." before 0.9)
                    code, (category, severity) = SYNTAX_RULE, ("syntax", "")
                elif code in RUFF_RULES:
                    category, severity = RUFF_RULES[code]
                else:
                    continue
                out[int(name[:6])].append(Defect(code, category, severity, int(row), message))
        return out


def analyzers(severities: tuple[str, ...]) -> dict[str, Analyzer]:
    """Language name -> analyzer for the configured severities."""
    table: dict[str, Analyzer] = {}
    for analyzer in (Ruff(severities),):
        for lang in analyzer.langs:
            table[lang] = analyzer
    return table
