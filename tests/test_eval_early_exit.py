"""A program that exits before its tests have run fails (issue 32): the suites' programs print a
line no completion can know after their last test, and the sandbox passes a program only when it
printed it. Each suite that executes code, with completions that stop the program early in every
way its language has; the right completion still passes."""

from __future__ import annotations

import pytest

from codemill.eval.models import truncate
from codemill.eval.sandbox import Limits, available, run
from codemill.eval.suites import END, SUITES

pytestmark = pytest.mark.skipif(not available(), reason="bubblewrap is not installed (make installs it)")

PY_EXITS = {
    "sys.exit": "import sys; sys.exit(0)",
    "os._exit": "import os; os._exit(0)",
    "exit()": "exit()",
    "quit()": "quit()",
    "SystemExit": "raise SystemExit",
    "kill self": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    "stdout closed": "import sys; sys.stdout.close()",
    "fd 1 closed": "import os; os.close(1)",
}


def judge(task, completion: str, expect: str | None = END) -> str:
    """The verdict on a completion cut at the task's stop strings, as a model's is (`expect=None`:
    by exit status alone, the rule before issue 32)."""
    argv, files = task.program(truncate(completion, task.request.stop))
    return run(argv, files, task.limits, expect=expect).status


@pytest.mark.parametrize("how", PY_EXITS)
def test_humaneval_and_mbpp_fail_a_program_that_exits_early(how):
    he = next(t for t in SUITES["humaneval"].load() if t.id == "HumanEval/23")
    mbpp = next(t for t in SUITES["mbpp"].load() if t.id == "MBPP/11")
    body = "    " + PY_EXITS[how] + "\n"
    assert judge(he, body + "    return len(string)\n") == "failed", how  # at the first call
    assert judge(he, "    return len(string)\n" + PY_EXITS[how] + "\n") == "failed", how  # at import
    assert judge(mbpp, mbpp.request.reference + "\n" + PY_EXITS[how] + "\n") == "failed", how


def test_the_right_python_completions_still_pass_and_print_freely():
    he = next(t for t in SUITES["humaneval"].load() if t.id == "HumanEval/23")
    assert judge(he, "    return len(string)\n") == "passed"
    argv, files = he.program("    print('no newline at the end', end='')\n    return len(string)\n")
    o = run(argv, files, he.limits, expect=END)
    assert o.status == "passed" and END not in o.stdout and o.stdout.startswith("no newline")


EXITS = {  # MultiPL-E HumanEval/23 (strlen): exits ahead of the tests, and the right body
    "cpp": (["\n    exit(0);\n}\n", "\n    std::quick_exit(0);\n}\n"], "\n    return string.size();\n}\n"),
    "java": (
        [
            "\n        System.exit(0);\n        return 0;\n    }\n",
            "\n        Runtime.getRuntime().halt(0);\n        return 0;\n    }\n",
        ],
        "\n        return string.length();\n    }\n",
    ),
    "js": (
        ["\n  process.exit(0);\n}\n", "\n  process.reallyExit(0);\n}\n"],
        "\n  return string.length;\n}\n",
    ),
}


@pytest.mark.parametrize("language", EXITS)
def test_multipl_e_fails_a_program_that_exits_early(language):
    task = next(t for t in SUITES[f"multipl-e-{language}"].load() if t.id == "HumanEval_23_strlen")
    exits, right = EXITS[language]
    for completion in exits:
        assert judge(task, completion, expect=None) == "passed", (language, completion)  # exit status 0
        assert judge(task, completion) == "failed", (language, completion)
    assert judge(task, right) == "passed", language


def test_the_sandbox_wants_the_expected_last_line():
    code = "import sys\nprint('x' * 100000)\nprint('the end')\n"
    o = run(["python3", "-I", "p.py"], {"p.py": code}, Limits(), expect="the end")
    assert o.status == "passed" and len(o.stdout) <= Limits().output_bytes  # read past the kept part
    o = run(["python3", "-I", "p.py"], {"p.py": "print('the end?')"}, Limits(), expect="the end")
    assert o.status == "failed" and "exited before its tests ran to the end" in o.stderr
