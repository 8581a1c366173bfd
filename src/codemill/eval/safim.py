"""SAFIM (Gong et al. 2024, "Evaluation of LLMs on Syntax-Aware Code Fill-in-the-Middle Tasks") as
its reference code defines it (gonglinyuan/safim @9543286: prompt_utils.py, evaluate.py) and as its
executor runs it (ntunlp/ExecEval: execution_engine/config.yaml, execution_engine.py), so numbers
compare with the paper's.

- Prompt: the task's `prompt` (instruction, problem statement, code) split at its hole marker, laid
  out in the model's FIM format (the reference's `infilling` mode is PSM, `reverse_infilling` SPM);
  128 new tokens, as the reference generates.
- Post-processing, the README's choice per split: block `truncate_line_until_block` (drop last lines
  until the filled program parses and its node-type trace differs from the empty hole's only inside
  the hole), control `truncate_control`, api `truncate_api_call`. Grammars are the installed
  tree-sitter wheels, not the reference's 2023 commits; the trace compares two parses by one grammar.
- Verdict (evaluate.py): a completion equal to the ground truth passes unrun; block and control
  otherwise run `eval_prompt` filled with it on the task's unit tests (stdin in, one of the accepted
  outputs out, ExecEval's comparison), stopping at the first failure; api compares by `syntax_match`.
  The reference's result names are kept per sample (`safim_result`).
- Execution: ExecEval's compilers and flags (CRLF made LF, as it does), compiled once per distinct
  program and run once per test inside one sandbox run; identical programs of a run are judged once.
  Python runs on PyPy as there (Debian's pypy3; CPython takes over 2 s x 2 on some ground truths).
  A language whose toolchain is not installed is skipped (counted, never scored failed), and so is a
  C# task whose ground truth Debian's mcs (C# 7) cannot compile (`OLDER_COMPILER`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from codemill.errors import UserError
from codemill.eval import benchdata, sandbox
from codemill.eval.models import Request
from codemill.eval.sandbox import Limits

KINDS = ("block", "control", "api")
LANGS = {"cpp": "C++", "java": "Java", "python": "Python", "csharp": "C#"}  # SAFIM's names: ours
HOLE = {"python": "# TODO: Your code here"}  # the others: /* TODO: Your code here */
C_HOLE = "/* TODO: Your code here */"
FILL = "{{completion}}"


@dataclass(frozen=True)
class Runtime:
    """How ExecEval compiles and runs a language (its config.yaml and limits_by_lang.yaml)."""

    source: str  # the file name (Java: the public class's, decided per program)
    compile: tuple[str, ...]  # {src} is the file name
    run: tuple[str, ...]
    factor: int  # ExecEval's time-limit factor on its 2 s per test
    memory_mb: int  # address space per test: ExecEval's 2 GiB, +1 GiB for the JVM
    tools: tuple[str, ...]  # what must be installed for the language to run here


RUNTIMES = {
    "cpp": Runtime(
        "prog.cpp",
        ("g++", "-std=c++17", "-s", "-x", "c++", "-O2", "-w", "-DONLINE_JUDGE", "-include", "limits.h",
         "-include", "math.h", "-static", "{src}", "-lm", "-o", "prog"),
        ("./prog",), 1, 2048, ("g++",),
    ),
    "java": Runtime(
        "Main.java",
        ("javac", "-J-Xmx512m", "-nowarn", "-encoding", "UTF8", "-d", ".", "{src}"),
        ("java", "-DONLINE_JUDGE=true", "-Xlog:disable", "-Xmx2g", "-XX:ReservedCodeCacheSize=64m",
         "-XX:-UseCompressedClassPointers", "-Xss256k", "-cp", ".", "{cls}"),
        3, 3072, ("javac", "java"),
    ),
    "python": Runtime(
        "prog.py", ("pypy3", "-W", "ignore", "-m", "py_compile", "{src}"),
        ("pypy3", "-W", "ignore", "-OO", "-s", "-S", "prog.py"), 2, 2048, ("pypy3",),
    ),
    "csharp": Runtime(
        "prog.cs", ("mcs", "-optimize+", "-nologo", "-out:prog.exe", "{src}"), ("mono", "prog.exe"),
        3, 3072, ("mcs", "mono"),
    ),
}  # fmt: skip
# languages whose compiler here takes less than ExecEval's: a task whose ground truth it cannot compile
# is skipped (counted), not failed; 115 of block's 529 C# programs use C# 8+ (switch expressions,
# ranges, `in` parameters), which Debian's mcs (C# 7) refuses and ExecEval's Roslyn csc takes
OLDER_COMPILER = {"csharp": "Debian's mono-mcs compiles C# 7; SAFIM's executor used Roslyn's csc"}
JAVA_CLASS = re.compile(r"public.* class (\w+)")  # ExecEval's java_file_name_suffix, without its tail
SANDBOX_LIMITS = Limits(cpu_s=120, wall_s=120.0, memory_mb=8192, processes=256, file_mb=64)


def missing(lang: str) -> list[str]:
    """The tools a language needs that are not installed here (empty: it runs)."""
    return [t for t in RUNTIMES[lang].tools if shutil.which(t) is None]


# ---------------------------------------------------------------- post-processing (prompt_utils.py)


def _parser(lang: str):
    import tree_sitter

    from codemill.langs import ts_language

    return tree_sitter.Parser(ts_language(LANGS[lang]))  # a fresh parser: judges run in threads


def _trace(parser, code: bytes) -> tuple[int, list[tuple[bool, str]]]:
    """ErrorCheckVisitor(with_ndtypes=True): ERROR nodes other than a lone `;`, and the enter/leave
    sequence of every node's type in document order."""
    cursor = parser.parse(code).walk()
    errors, trace = 0, []
    while True:
        node = cursor.node
        trace.append((True, node.type))
        errors += node.type == "ERROR" and node.text != b";"
        if cursor.goto_first_child():
            continue
        trace.append((False, node.type))
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return errors, trace
            trace.append((False, cursor.node.type))


def _matched(a: list, b: list) -> tuple[int, int]:
    """match_prefix_and_suffix: the common prefix length and minus the common suffix length."""
    p = 0
    while p < len(a) and p < len(b) and a[p] == b[p]:
        p += 1
    q = 0
    while -q < len(a) and -q < len(b) and a[q - 1] == b[q - 1]:
        q -= 1
    return p, q


def truncate_block(eval_prompt: str, lang: str, completion: str) -> str:
    """truncate_line_until_block: drop the completion's last line until the filled program has no
    ERROR node and its trace equals the empty hole's plus a whole number of nodes inside the hole
    (`pass` fills Python's hole: its 4 trace entries are discounted). The reference asserts that the
    empty hole's program parses; under the installed grammars 14 of block's C++ programs have an
    ERROR node outside the hole, so the filled program may have as many, not more."""
    parser = _parser(lang)
    prefix, suffix = (s.encode() for s in eval_prompt.split(FILL))
    allowed, empty = _trace(parser, prefix + (b"pass" if lang == "python" else b"") + suffix)
    lines = completion.splitlines(keepends=True)
    while lines:
        errors, trace = _trace(parser, prefix + "".join(lines).encode() + suffix)
        if errors <= allowed and len(empty) <= len(trace):
            p, q = _matched(empty, trace)
            if len(empty) - (p - q) - (4 if lang == "python" else 0) == 0:
                break
        lines.pop()
    return "".join(lines)


def truncate_control(lang: str, completion: str) -> str:
    """truncate_control: Python's first non-empty line; else up to the first unmatched `)`."""
    if lang == "python":
        return next((line for line in completion.splitlines() if line.strip()), "")
    depth = 0
    for i, ch in enumerate(completion):
        depth += (ch == "(") - (ch == ")")
        if depth == -1:
            return completion[:i]
    return completion


def truncate_api_call(completion: str) -> str:
    """truncate_api_call: up to and including the `)` that closes depth 0 (or a stray one)."""
    depth = 0
    for i, ch in enumerate(completion):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth <= 0:
                return completion[: i + 1]
    return completion


def postprocess(kind: str, row: dict, completion: str) -> str:
    if kind == "block":
        return truncate_block(row["eval_prompt"], row["lang"], completion)
    if kind == "control":
        return truncate_control(row["lang"], completion)
    return truncate_api_call(completion)


# ---------------------------------------------------------------- verdicts (evaluate.py, ExecEval)


def syntax_match(code1: str, code2: str, lang: str) -> bool:
    """evaluate.py's API-call match: whitespace removed; in Python, two calls whose positional and
    keyword arguments dump alike match (the callee is not compared), else the texts must be equal."""
    code1, code2 = re.sub(r"\s+", "", code1), re.sub(r"\s+", "", code2)
    if lang == "python":
        try:
            t1, t2 = ast.parse(code1, mode="eval").body, ast.parse(code2, mode="eval").body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            t1 = t2 = None
        if isinstance(t1, ast.Call) and isinstance(t2, ast.Call):
            return _args(t1) == _args(t2)
    return code1 == code2


def _args(call: ast.Call) -> tuple[list[str], dict]:
    return [ast.dump(a) for a in call.args], {k.arg: ast.dump(k.value) for k in call.keywords}


def _python_parses(code: str) -> bool:
    """evaluate.py's check_syntax (tree-sitter, a lone `;` ERROR allowed): failed Python that does
    not parse is labelled COMPILATION_ERROR."""
    return _trace(_parser("python"), code.encode())[0] == 0


# Runs inside the sandbox with the system Python: compile once, run each test with ExecEval's
# limits (wall time 2 s x factor, address space, an unlimited stack), compare as its
# validate_outputs, stop at the first failure; one JSON line, then the end marker only when every
# test passed.
DRIVER = r"""
import json, resource, signal, subprocess
from decimal import Decimal, InvalidOperation

spec = json.load(open("spec.json"))
WORDS = {"yes", "no", "true", "false"}


def same(expected, got):
    a, b = expected.strip().split("\n"), got.strip().split("\n")
    if len(a) == len(b) and all(x.strip() == y.strip() for x, y in zip(a, b)):
        return True
    ta, tb = expected.split(), got.split()
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        try:
            if abs(Decimal(x) - Decimal(y)) > Decimal("1e-12"):
                return False
        except (InvalidOperation, ValueError):
            x, y = (t.lower() if t.lower() in WORDS else t for t in (x, y))
            if x != y:
                return False
    return True


def limit():
    mem = spec["memory_mb"] * 1024 ** 2
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (spec["timeout_s"], spec["timeout_s"] + 1))
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]  # ExecEval: stack unlimited (big local arrays)
    resource.setrlimit(resource.RLIMIT_STACK, (hard, hard))


def say(result, **more):
    print(json.dumps({"result": result, **more}), flush=True)


def main():
    if spec["compile"]:
        try:
            c = subprocess.run(spec["compile"], capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            return say("COMPILATION_ERROR", detail="compiling took over 60 s")
        if c.returncode:
            return say("COMPILATION_ERROR", detail=(c.stdout + c.stderr).decode("utf-8", "replace")[-1500:])
    for i, test in enumerate(spec["tests"]):
        try:
            p = subprocess.run(spec["run"], input=test["input"].encode(), capture_output=True,
                               timeout=spec["timeout_s"], preexec_fn=limit)
        except subprocess.TimeoutExpired:
            return say("TIME_LIMIT_EXCEEDED", test=i)
        out, err = p.stdout.decode("utf-8", "ignore"), p.stderr.decode("utf-8", "ignore")
        if p.returncode == 0:
            if not any(same(o, out.strip()) for o in test["output"]):
                return say("WRONG_ANSWER", test=i, detail=out[-500:])
            continue
        if p.returncode == -signal.SIGXCPU:
            return say("TIME_LIMIT_EXCEEDED", test=i)
        if not err:  # ExecEval's reading of a silent crash
            return say("MEMORY_LIMIT_EXCEEDED", test=i)
        low = err.lower()
        mle = any(s in low for s in ("out of memory", "bad_alloc", "bad alloc", "memoryerror"))
        return say("MEMORY_LIMIT_EXCEEDED" if mle else "RUNTIME_ERROR", test=i, detail=err[-500:])
    say("PASSED", tests=len(spec["tests"]))
    print(spec["end"])


main()
"""

END = "codemill-safim-tests-passed"


def program(lang: str, code: str, tests: list[dict]) -> tuple[list[str], dict[str, str]] | str:
    """The sandbox run that judges `code` on `tests`: (argv, files), or a COMPILATION_ERROR detail
    when ExecEval would not get as far as compiling (a Java program with no public class)."""
    rt = RUNTIMES[lang]
    code = code.replace("\r\n", "\n")
    source, cls = rt.source, ""
    if lang == "java":
        found = JAVA_CLASS.search(code)
        if found is None:
            return "no public class to name the file after (ExecEval's JavaClassNotFoundError)"
        cls = found.group(1)
        source = f"{cls}.java"
    fill = lambda args: [a.replace("{src}", source).replace("{cls}", cls) for a in args]  # noqa: E731
    spec = {"compile": fill(rt.compile), "run": fill(rt.run), "tests": tests, "end": END,
            "timeout_s": 2 * rt.factor, "memory_mb": rt.memory_mb}  # fmt: skip
    files = {source: code, "spec.json": json.dumps(spec), "driver.py": DRIVER}
    return [*sandbox.python(), "driver.py"], files


def execute(lang: str, code: str, tests: list[dict], unsafe: bool = False, isolate: bool = True) -> dict:
    """Judge a filled program on its unit tests in the sandbox: `verdict` (passed, failed, timeout),
    `safim_result` (ExecEval's outcome name), the failing test and what it printed, seconds.
    `unsafe` and `isolate` as sandbox.run's."""
    built = program(lang, code, tests)
    if isinstance(built, str):
        return {"verdict": "failed", "safim_result": "COMPILATION_ERROR", "detail": built, "seconds": 0.0}
    argv, files = built
    wall = 60 + 2 * RUNTIMES[lang].factor * len(tests) * 2 + 30  # compile, tests, interpreter starts
    limits = Limits(**{**SANDBOX_LIMITS.__dict__, "wall_s": float(wall)})
    o = sandbox.run(argv, files, limits, unsafe=unsafe, expect=END, isolate=isolate)
    last = next((line for line in reversed(o.stdout.splitlines()) if line.startswith("{")), None)
    said = json.loads(last) if last else {}
    result = said.get("result") or ("TIME_LIMIT_EXCEEDED" if o.status == "timeout" else "RUNTIME_ERROR")
    out = {"verdict": "passed" if o.status == "passed" else "timeout" if o.status == "timeout" else "failed",
           "safim_result": result, "seconds": o.seconds}  # fmt: skip
    if result != "PASSED":
        out["detail"] = said.get("detail") or o.stderr[-500:]
        if "test" in said:
            out["test"] = said["test"]
    return out


class Judge:
    """Judges one suite's completions: post-processing, then evaluate.py's verdict; identical
    programs are compiled and run once per Judge (one per loaded suite, so per run)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._runs: dict[str, Future] = {}
        self._lock = threading.Lock()

    def __call__(self, row: dict, completion: str) -> dict:
        cut = postprocess(self.kind, row, completion)
        out: dict = {"completion": cut, "raw_completion": completion}
        lang = row["lang"]
        if self.kind == "api":
            ok = syntax_match(cut, row["ground_truth"], lang)
            result = "EXACT_MATCH" if ok else "EMPTY" if not cut.strip() else "WRONG_ANSWER"
            return {**out, "verdict": "passed" if ok else "failed", "safim_result": result}
        if absent := missing(lang):
            return {**out, "skipped": f"{LANGS[lang]}: {', '.join(absent)} not installed"}
        if (
            lang in OLDER_COMPILER
            and self._verdict(row, row["ground_truth"])["safim_result"] == "COMPILATION_ERROR"
        ):
            return {
                **out,
                "skipped": f"{LANGS[lang]}: its ground truth does not compile here ({OLDER_COMPILER[lang]})",
            }
        if cut == row["ground_truth"]:  # evaluate.py: passed without running
            return {**out, "verdict": "passed", "safim_result": "PASSED", "seconds": 0.0}
        return {**out, **self._verdict(row, cut)}

    def _verdict(self, row: dict, cut: str) -> dict:
        lang = row["lang"]
        code = row["eval_prompt"].replace(FILL, cut)
        res = dict(self._once(lang, code, row["unit_tests"]))
        if res["verdict"] != "passed":
            if not cut.strip():
                res["safim_result"] = "EMPTY"
            elif lang == "python" and not _python_parses(code):
                res["safim_result"] = "COMPILATION_ERROR"
        return res

    def _once(self, lang: str, code: str, tests: list[dict]) -> dict:
        key = hashlib.sha256(json.dumps([lang, code, tests]).encode()).hexdigest()
        with self._lock:
            fut, first = self._runs.get(key), key not in self._runs
            if first:
                fut = self._runs[key] = Future()
        if first:
            try:
                fut.set_result(execute(lang, code, tests, unsafe=not sandbox.available()))
            except BaseException as e:
                fut.set_exception(e)
                raise
        return fut.result()


FIELDS = {"task_id", "lang", "prompt", "eval_prompt", "ground_truth"}


def rows(kind: str, data: str | None = None) -> list[dict]:
    """The split's records (the shipped file, or --data), checked: a known language, one hole."""
    if kind not in KINDS:
        raise UserError(f"SAFIM split must be one of {', '.join(KINDS)}")
    path = Path(data) if data else benchdata.locate(f"safim/{kind}_completion.jsonl.gz")
    if not path.exists():
        raise UserError(f"{path} does not exist; pass the SAFIM file with --data")
    out = []
    for n, line in enumerate(benchdata.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path} line {n}: not JSON ({e})") from None
        lacks = FIELDS - row.keys() if isinstance(row, dict) else FIELDS
        if lacks:
            raise UserError(f"{path} line {n}: not a SAFIM record (lacks {', '.join(sorted(lacks))})")
        lang, prompt = row["lang"], row["prompt"]
        if (
            lang not in LANGS
            or prompt.count(HOLE.get(lang, C_HOLE)) != 1
            or row["eval_prompt"].count(FILL) != 1
        ):
            raise UserError(f"{path} line {n}: unknown language {lang!r} or not exactly one hole")
        if kind != "api":
            tests = row.get("unit_tests")
            row["unit_tests"] = json.loads(tests) if isinstance(tests, str) else tests  # the hub's: a string
            if not row["unit_tests"]:
                raise UserError(f"{path} line {n}: a {kind} task without unit_tests")
        out.append(row)
    return out


def request(row: dict, fim_mode: str = "psm") -> Request:
    """The reference's `infilling` prompt: the task's prompt split at its hole, in the model's format."""
    prefix, suffix = row["prompt"].split(HOLE.get(row["lang"], C_HOLE))
    ext = {"cpp": ".cpp", "java": ".java", "python": ".py", "csharp": ".cs"}[row["lang"]]
    return Request(prefix, suffix, max_tokens=128, reference=row["ground_truth"], path=f"solution{ext}",
                   spm=fim_mode == "spm")  # fmt: skip


def judge_of(kind: str) -> Callable[[dict], Callable[[str], dict]]:
    """One Judge for a loaded suite, bound per task to its record."""
    judge = Judge(kind)
    return lambda row: lambda completion: judge(row, completion)
