"""codemill's CrossCodeEval, SantaCoder-FIM and FIM-Eval scores beside the benchmarks' own reference
code, run on the same pairs; prints how many pairs differ per metric (issue 32).

The references are read from snapshots (a checkout, or a bare git directory):
amazon-science/cceval @25f9cab (`scripts/eval_metric.py`, `eval_utils.py`),
bigcode-project/bigcode-evaluation-harness @8fc5bae6 (`bigcode_eval/base.py`, `tasks/santacoder_fim.py`)
and aixcoder-plugin/aiXcoder-FIM-Evaluation @bd3771e (`run_evaluate.py`, `codebleu/`). cceval imports
pure-Python packages codemill does not use; install them apart:

    pip install --target /tmp/cceval-deps fuzzywuzzy==0.18.0 python-Levenshtein nltk timeout-decorator
    .venv/bin/python benchmarks/eval_parity.py --cceval CCEVAL --bigcode BIGCODE --aixcoder AIXCODER \\
        --deps /tmp/cceval-deps

What is not the reference's own code: cceval parses Python with codemill's tree-sitter grammar (its
own is built from grammar repositories at run time); bigcode's `datasets` import is stubbed and its
dataset replaced by the pairs; aiXcoder's syntax and data-flow terms need a tree-sitter 0.20 build
that is not in its snapshot, so they come from codemill (tests/test_codebleu.py checks them against
the codebleu package) while its n-gram terms, tokenizer, BLEU-4, exact match and the sum run as
published. Pairs: lines and spans of the shipped MBPP, MultiPL-E and HumanEval-infilling data (and
the demo's built benchmarks under runs/demo/bench when present), each with deterministic mutations.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

from codemill.eval import benchdata, scoring
from codemill.eval.models import truncate
from codemill.eval.suites import SANTACODER_STOPS
from codemill.langs import ts_parser

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")  # bigcode scores through tqdm
CCEVAL_LANGS = {"Python": "python", "Java": "java", "TypeScript": "typescript", "C#": "csharp"}
AIX_LANGS = {"Python": "python", "Java": "java", "JavaScript": "javascript", "C++": "cplus"}


def export(snapshot: Path, paths: list[str], dest: Path) -> Path:
    """The files under `paths` of a checkout or a bare git directory, copied to `dest`."""
    if (snapshot / "HEAD").is_file() and not (snapshot / ".git").exists():
        names = subprocess.run(["git", "--git-dir", str(snapshot), "ls-tree", "-r", "--name-only", "HEAD", *paths],
                               capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        for name in names:
            if name.endswith((".pyc", ".so")) or name.startswith("data/"):
                continue
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            blob = subprocess.run(
                ["git", "--git-dir", str(snapshot), "show", f"HEAD:{name}"], capture_output=True
            )
            out.write_bytes(blob.stdout)
    else:
        for p in paths:
            src = snapshot / p
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / p)
    return dest


# ---- pairs ---------------------------------------------------------------------------------------


def sources() -> dict[str, list[str]]:
    """Code texts per language from the shipped benchmark data."""
    rows = lambda rel: [json.loads(x) for x in benchdata.read_text(benchdata.locate(rel)).splitlines()]  # noqa: E731
    mbpp = [r["code"].replace("\r\n", "\n") for r in rows("mbpp/mbpp.jsonl")]
    java = [r["prompt"] + r["tests"] for r in rows("multipl-e/humaneval-java.jsonl")]
    js = [r["prompt"] + r["tests"] for r in rows("multipl-e/humaneval-js.jsonl")]
    cpp = [r["prompt"] + r["tests"] for r in rows("multipl-e/humaneval-cpp.jsonl")]
    return {"Python": mbpp, "Java": java, "JavaScript": js, "C++": cpp}


def mutate(target: str, rest: str, k: int, language: str) -> str:
    """The k-th deterministic variant of a completion whose right answer is `target`, followed by
    the file's next lines `rest` as a model going on would write them."""
    comment = "#" if language == "Python" else "//"
    names = re.findall(r"[A-Za-z_]\w*", target)
    variants = [
        target,
        f"{target}  {comment} note",
        target.replace(names[0], names[0] + "2", 1) if names else target + "x",
        target[: max(1, len(target) // 2)],
        f"{target} + 0x1fc7",
        re.sub(r"\"[^\"]*\"", '"changed"', target) if '"' in target else target + ' + "s"',
        "\n" + target,
        target.replace("True", "False").replace("true", "false") + " ",
        "",
        f"{comment} {target}",
    ]
    return variants[k % len(variants)] + ("\n" + rest if k % 3 else "")


def line_pairs(texts: list[str], n: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, target line, next lines) for `n` non-blank lines drawn from `texts`."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        lines = rng.choice(texts).split("\n")
        i = rng.randrange(len(lines))
        if lines[i].strip() and i + 1 < len(lines):
            indent = len(lines[i]) - len(lines[i].lstrip())
            prompt = "\n".join(lines[:i]) + "\n" + lines[i][:indent]
            out.append((prompt, lines[i][indent:], "\n".join(lines[i + 1 : i + 3])))
    return out


def cceval_pairs(src: dict[str, list[str]]) -> list[dict]:
    """CrossCodeEval-shaped pairs: C# takes Java's lines (the metrics read text; its keywords differ)
    and TypeScript JavaScript's."""
    pairs = []
    demo = ROOT / "runs/demo/bench/crossfile/python/line_completion.jsonl"
    picked = {
        "Python": ("Python", 70),
        "Java": ("Java", 80),
        "TypeScript": ("JavaScript", 60),
        "C#": ("Java", 60),
    }
    for lang, (from_lang, n) in picked.items():
        for prompt, target, rest in line_pairs(src[from_lang], n, seed=len(pairs)):
            pairs.append({"language": lang, "prompt": prompt, "target": target, "rest": rest})
    if demo.exists():
        for row in map(json.loads, demo.read_text().splitlines()):
            rest = row["right_context"].split("\n", 1)[-1]
            pairs.append(
                {"language": "Python", "prompt": row["prompt"], "target": row["groundtruth"], "rest": rest}
            )
    for k, p in enumerate(pairs):
        p["raw"] = mutate(p["target"], p["rest"], k, p["language"])
    return pairs


# ---- CrossCodeEval -------------------------------------------------------------------------------


def run_cceval(snapshot: Path, tmp: Path, pairs: list[dict], deps: str | None) -> dict:
    scripts = export(snapshot, ["scripts"], tmp / "cceval") / "scripts"
    sys.path[:0] = [str(scripts)] + ([deps] if deps else [])
    import eval_metric
    import eval_utils
    from fuzzywuzzy import fuzz

    eval_metric.parser = ts_parser("Python")  # the module-global parser its workers use
    fields = ("exact_match", "identifier_em", "identifier_f1", "edit_similarity", "edit_similarity_difflib")
    differ = dict.fromkeys(fields, 0)
    for i, p in enumerate(pairs):
        lang = CCEVAL_LANGS[p["language"]]
        trunc, em = eval_metric.process_examples(
            lang, ({"task_id": i, "pred": p["raw"]}, {"prompt": p["prompt"], "groundtruth": p["target"]})
        )
        tp, fp, fn = eval_metric.compute_id_match(trunc["pred_ids"], trunc["target_ids"])
        ref = {
            "exact_match": bool(em),
            "identifier_em": trunc["pred_ids"] == trunc["target_ids"],
            "identifier_f1": 100
            * (2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) != 0 else 0),  # its line
            "edit_similarity": eval_utils.cal_edit_sim([trunc["target"]], [trunc["pred"]]),
        }
        matcher, fuzz.SequenceMatcher = fuzz.SequenceMatcher, __import__("difflib").SequenceMatcher
        ref["edit_similarity_difflib"] = eval_utils.cal_edit_sim([trunc["target"]], [trunc["pred"]])
        fuzz.SequenceMatcher = matcher  # fuzzywuzzy's fallback without python-Levenshtein, then back
        task = SimpleNamespace(
            target=p["target"],
            language=p["language"],
            request=SimpleNamespace(prefix=p["prompt"], context=[]),
        )
        ours = scoring.statement_scores(task, p["raw"])
        ours["edit_similarity_difflib"] = ours["edit_similarity"]
        for f in fields:
            differ[f] += ours[f] != ref[f]
    return differ


# ---- SantaCoder-FIM ------------------------------------------------------------------------------


def santacoder_pairs(src: dict[str, list[str]]) -> list[dict]:
    """Single-line middles: HumanEval-infilling's (Python), MultiPL-E's lines (JavaScript, Java)."""
    rows = benchdata.read_text(
        benchdata.locate("human-eval-infilling/HumanEval-SingleLineInfilling.jsonl.gz")
    )
    pairs = [{"language": "py", "prompt": r["prompt"], "suffix": r["suffix"], "target": r["canonical_solution"],
              "rest": r["suffix"].split("\n", 1)[0]} for r in map(json.loads, rows.splitlines()[::8])]  # fmt: skip
    for lang, name in (("js", "JavaScript"), ("java", "Java")):
        for prompt, target, rest in line_pairs(src[name], 50, seed=len(pairs)):
            pairs.append(
                {"language": lang, "prompt": prompt, "suffix": rest, "target": target + "\n", "rest": rest}
            )
    ends = ["", "\n", "<|endoftext|>junk", "<|filename|>b.py\nx = 1", "\n\n", "  "]
    for k, p in enumerate(pairs):
        body = p["target"] if k % 4 else mutate(p["target"].strip(), p["rest"], k, "Python")
        p["raw"] = (
            ("\n" if k % 7 == 0 else "") + body + ends[k % len(ends)] + (p["rest"] if k % 5 == 0 else "")
        )
    return pairs


def run_bigcode(snapshot: Path, tmp: Path, pairs: list[dict]) -> dict:
    root = export(snapshot, ["bigcode_eval/base.py", "bigcode_eval/tasks/santacoder_fim.py"], tmp / "bigcode")
    for pkg in ("bigcode_eval", "bigcode_eval/tasks"):
        (root / pkg / "__init__.py").touch()
    sys.modules.setdefault(
        "datasets", types.SimpleNamespace(load_dataset=None)
    )  # only its __init__ loads data
    sys.path.insert(0, str(root))
    from bigcode_eval.tasks.santacoder_fim import SantaCoderFIM

    task = SantaCoderFIM.__new__(SantaCoderFIM)  # its __init__ downloads the dataset
    params = inspect.signature(SantaCoderFIM.__init__).parameters
    for name in ("stop_words", "fim_prefix", "fim_middle", "fim_suffix"):
        setattr(task, name, params[name].default)
    differ = 0
    for p in pairs:
        task.get_dataset = lambda p=p: [p]  # one document: its index 0 in both methods
        gen = task.postprocess_generation(task.get_prompt(p) + p["raw"], 0)
        ref = task.process_results([[gen]], [p["target"]])
        ours = scoring.whole_match(SimpleNamespace(target=p["target"]), truncate(p["raw"], SANTACODER_STOPS))
        differ += ours["exact_match"] != bool(ref[f"{p['language']} Exact Match"])
    return {"exact_match": differ, "stop_words_equal": tuple(task.stop_words) == SANTACODER_STOPS}


# ---- FIM-Eval ------------------------------------------------------------------------------------


def fim_pairs(src: dict[str, list[str]]) -> list[dict]:
    """Middles of one to four lines; the demo's built FIM-Eval when present."""
    pairs = []
    for lang in AIX_LANGS:
        rng = random.Random(len(pairs))
        for _ in range(50):
            lines = rng.choice(src[lang]).split("\n")
            i = rng.randrange(len(lines))
            middle = "\n".join(lines[i : i + rng.randint(1, 4)])
            if middle.strip():
                pairs.append({"language": lang, "target": middle, "rest": "\n".join(lines[i + 4 : i + 6])})
    for f in sorted((ROOT / "runs/demo/bench/fim").glob("*_test.jsonl")):
        lang = {"python": "Python", "javascript": "JavaScript"}[f.name.split("_")[0]]
        for row in map(json.loads, f.read_text().splitlines()[::3]):
            pairs.append(
                {"language": lang, "target": row["canonical_solution"], "rest": row["post_mask_code"][:80]}
            )
    for k, p in enumerate(pairs):
        p["raw"] = mutate(p["target"], p["rest"], k, p["language"]) if k % 4 else p["target"]
    return pairs


def run_aixcoder(snapshot: Path, tmp: Path, pairs: list[dict]) -> dict:
    root = export(snapshot, ["run_evaluate.py", "codebleu"], tmp / "aixcoder")
    (root / "codebleu" / "my-languages.so").touch()  # asserted to exist; the shims below parse instead
    sys.path.insert(0, str(root))
    import codebleu.codebleu as cb
    import run_evaluate

    from codemill.eval.codebleu import _dataflow_match, _strip_comments, _syntax_match, lang_key

    def terms(term):  # codemill's term on the reference's inputs (it strips comments itself here)
        def corpus(refs, hyps, lang, _so):
            key = lang_key(lang)  # the reference's key (python, cpp) as langs.py names the language
            clean = lambda x: _strip_comments(x, key)  # noqa: E731
            return term([clean(r[0]) for r in refs], [clean(h) for h in hyps], key)

        return corpus

    cb.syntax_match.corpus_syntax_match = terms(_syntax_match)
    cb.dataflow_match.corpus_dataflow_match = terms(_dataflow_match)
    differ = {"exact_match": 0, "bleu4": 0, "codebleu": 0}
    cwd = os.getcwd()
    os.chdir(root)
    try:
        (root / "datasets").mkdir(exist_ok=True)
        for lang, name in AIX_LANGS.items():
            group = [p for p in pairs if p["language"] == lang]
            (root / "datasets" / f"{name}_test_8k_full.jsonl").write_text("".join(
                json.dumps({"task_id": i, "canonical_solution": p["target"], "task_type": "t"}) + "\n"
                for i, p in enumerate(group)))  # fmt: skip
            answers = root / "out" / f"{name}.jsonl"
            answers.parent.mkdir(exist_ok=True)
            answers.write_text("".join(json.dumps({"task_id": i, "prediction": p["raw"]}) + "\n"
                                       for i, p in enumerate(group)))  # fmt: skip
            scored = [
                json.loads(x) for x in Path(run_evaluate.score(name, str(answers))).read_text().splitlines()
            ]
            for p, ref in zip(group, scored, strict=True):
                ours = scoring.text_scores(SimpleNamespace(target=p["target"], language=lang), p["raw"])
                differ["exact_match"] += ours["exact_match"] != ref["exact_match"]
                differ["bleu4"] += abs(ours["bleu4"] / 100 - ref["bleu4_score"]) > 1e-9
                differ["codebleu"] += abs(ours["codebleu"] / 100 - ref["codebleu_score"]) > 1e-9
    finally:
        os.chdir(cwd)
    return differ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cceval", type=Path, help="amazon-science/cceval snapshot")
    ap.add_argument("--bigcode", type=Path, help="bigcode-evaluation-harness snapshot")
    ap.add_argument("--aixcoder", type=Path, help="aiXcoder-FIM-Evaluation snapshot")
    ap.add_argument(
        "--deps", help="a --target directory with fuzzywuzzy, python-Levenshtein, nltk, timeout-decorator"
    )
    args = ap.parse_args()
    src = sources()
    with tempfile.TemporaryDirectory() as tmp:
        if args.cceval:
            pairs = cceval_pairs(src)
            langs = {lang: sum(p["language"] == lang for p in pairs) for lang in CCEVAL_LANGS}
            print(f"CrossCodeEval vs cceval: {len(pairs)} pairs {langs}, differing:",
                  run_cceval(args.cceval, Path(tmp), pairs, args.deps))  # fmt: skip
        if args.bigcode:
            pairs = santacoder_pairs(src)
            print(
                f"SantaCoder-FIM vs bigcode: {len(pairs)} pairs, differing:",
                run_bigcode(args.bigcode, Path(tmp), pairs),
            )
        if args.aixcoder:
            pairs = fim_pairs(src)
            print(
                f"FIM-Eval vs aiXcoder: {len(pairs)} pairs, differing:",
                run_aixcoder(args.aixcoder, Path(tmp), pairs),
            )


if __name__ == "__main__":
    main()
