"""Static analysis drops only where its precision is supported (issue 29): the real standard-library
and numpy modules the audit found dropped are kept, their findings recorded; what CPython cannot
compile still drops."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from codemill.curate.checks import CheckedFile, StaticAnalysis, Syntax
from codemill.curate.config import CurateConfig
from codemill.curate.static import DROPPING, RECORDED, RUFF_RULES, Ruff

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SITE = Path(sysconfig.get_paths()["purelib"])

# file -> rules the audit saw drop it (issue 29), now recorded only
AUDITED = {
    STDLIB / "turtle.py": {"F821"},
    STDLIB / "inspect.py": {"F821", "F822"},
    STDLIB / "re/__init__.py": {"F821"},
    STDLIB / "pydoc.py": {"S602"},
    STDLIB / "idlelib/config_key.py": {"S608"},  # "Select the desired modifier keys" in a label
    SITE / "numpy/__init__.py": {"F821"},
    SITE / "typing_extensions.py": {"F822"},
}


def _texts() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in AUDITED if p.exists()}


def test_real_modules_the_audit_saw_dropped_are_kept_with_their_findings_recorded():
    texts = _texts()
    if len(texts) < 5:
        pytest.skip("the audited modules are not installed here")
    cfg = CurateConfig()
    found = Ruff(cfg.drop_severities).analyze([(str(p), t) for p, t in texts.items()])
    for (path, _), defects in zip(texts.items(), found, strict=True):
        assert not [d for d in defects if d.severity in cfg.drop_severities], path
        recorded = {d.rule for d in defects if d.severity == RECORDED}
        assert AUDITED[path] <= recorded, (path, recorded)
    # through the pipeline's own checks: the syntax check runs ruff, static analysis keeps them all
    docs = [CheckedFile("r", str(p), len(t), lang="Python", text=t) for p, t in texts.items()]
    assert not any(Syntax(cfg).check_batch(docs))
    assert not any(StaticAnalysis(cfg).check_batch(docs))


COMPILE_ERRORS = {
    "F701": "\n\nbreak\n",
    "F702": "\n\ncontinue\n",
    "F704": "\n\nyield 1\n",
    "F706": "\n\nreturn 1\n",
    "PLE0117": "\n\ndef _planted():\n    nonlocal textwrap_x\n",
    "PLE0118": "\n\ndef _planted():\n    print(_width)\n    global _width\n",
    "PLE1142": "\n\ndef _planted():\n    await _planted()\n",
}


def test_what_cpython_cannot_compile_still_drops():
    assert set(COMPILE_ERRORS) == set(DROPPING)
    assert {c for c, (_, sev) in RUFF_RULES.items() if sev in ("blocker", "critical")} == set(DROPPING)
    real = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    planted = {rule: real + tail for rule, tail in COMPILE_ERRORS.items()}
    for text in planted.values():  # the rule's premise: CPython refuses the file
        with pytest.raises(SyntaxError):
            compile(text, "textwrap.py", "exec")
    cfg = CurateConfig()
    docs = [CheckedFile("r", f"{rule}.py", len(t), lang="Python", text=t) for rule, t in planted.items()]
    docs.append(CheckedFile("r", "textwrap.py", len(real), lang="Python", text=real))
    assert not any(Syntax(cfg).check_batch(docs))  # ruff and tree-sitter both parse them
    verdicts = StaticAnalysis(cfg).check_batch(docs)
    assert [v.reason if v else None for v in verdicts] == [f"bug:{r}" for r in COMPILE_ERRORS] + [None]


def test_undefined_names_are_recorded_not_dropped():
    cfg = CurateConfig()
    text = "def f():\n    return undefined_name + 1\n"
    [defects] = Ruff(cfg.drop_severities).analyze([("bug.py", text)])
    assert [(d.rule, d.category, d.severity) for d in defects] == [("F821", "bug", RECORDED)]
    # a recipe that wants the old behaviour adds the severity
    strict = CurateConfig(drop_severities=("blocker", "critical", RECORDED))
    doc = CheckedFile("r", "bug.py", len(text), lang="Python", text=text)
    Syntax(strict).check_batch([doc])
    assert StaticAnalysis(strict).check(doc).reason == "bug:F821"
