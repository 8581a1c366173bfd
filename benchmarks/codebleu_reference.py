"""Build the fixed CodeBLEU pairs and score them with the reference implementation.

Step 1 (codemill's venv) writes pairs cut from real code: MBPP solutions (Python), C++ and JavaScript
functions found on this machine, and Java methods (MultiPL-E's test drivers plus a few written here,
since the machine has no Java sources). Each reference is paired with itself, a renamed copy, its
first half, a three-line fragment of each (as FIM middles are) and another function.

Step 2 (a venv with the reference: `pip install codebleu==0.7.0 tree-sitter==0.23.2
tree-sitter-python==0.23.6 tree-sitter-java==0.23.5 tree-sitter-javascript==0.23.1
tree-sitter-cpp==0.23.4`) scores every pair under twelve hash seeds, since the reference orders some
data-flow parents through sets, and writes tests/data/codebleu_reference.jsonl.

    .venv/bin/python benchmarks/codebleu_reference.py pairs /tmp/pairs.jsonl
    /tmp/cbv/bin/python benchmarks/codebleu_reference.py score /tmp/pairs.jsonl tests/data/codebleu_reference.jsonl
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

CPP = [
    "/root/.pyenv/versions/3.11.7/lib/python3.11/test/test_cppext/extension.cpp",
    "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/numpy/_core/tests/data/generate_umath_validation_data.cpp",
    "/usr/include/c++/12/bits/stl_algo.h",
]
JS = ["/usr/share/doc/nodejs/api/assets/api.js"]
JAVA = [
    """public static int sumOdd(int[] xs) {
    int total = 0;
    for (int i = 0; i < xs.length; i++) {
        if (xs[i] % 2 == 1) {
            total += xs[i];
        } else {
            total = total - 1;
        }
    }
    return total;
}""",
    """static String reverse(String s) {
    StringBuilder sb = new StringBuilder();
    for (char c : s.toCharArray()) {
        sb.insert(0, c);
    }
    String out = sb.toString();
    return out;
}""",
    """public long fib(int n) {
    long a = 0, b = 1;
    while (n > 0) {
        long t = a + b;
        a = b;
        b = t;
        n--;
    }
    return a;
}""",
    """int maxOf(List<Integer> values) {
    int best = Integer.MIN_VALUE;
    for (Integer v : values) {
        best = Math.max(best, v);
    }
    return best;
}""",
]
KEYWORDISH = re.compile(r"[A-Za-z_]\w*")


def functions(path: str, language: str, limit: int) -> list[str]:
    from codemill.langs import STRUCTURES, ts_parser

    source = Path(path).read_bytes()
    root = ts_parser(language).parse(source).root_node
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.type in STRUCTURES[language].functions and 4 <= node.end_point[0] - node.start_point[0] <= 40:
            found.append(source[node.start_byte : node.end_byte].decode())
        stack.extend(reversed(node.children))
    return found[:limit]


def variants(ref: str, other: str) -> list[str]:
    names = Counter(t for t in KEYWORDISH.findall(ref) if len(t) > 2)
    renamed = re.sub(rf"\b{re.escape(names.most_common(1)[0][0])}\b", "tmp_var", ref) if names else ref
    lines = ref.split("\n")
    half = "\n".join(lines[: max(1, len(lines) // 2)])
    return [ref, renamed, half, other, "\n".join(renamed.split("\n")[1:4])]


def bench(rel: str) -> list[dict]:
    """A published benchmark file's records, found as `codemill eval` finds it (codemill.eval.benchdata:
    the copy the package ships, $CODEMILL_BENCHMARKS overriding); imported here, in step 1 only."""
    from codemill.eval.benchdata import locate, read_text

    return [json.loads(x) for x in read_text(locate(rel)).splitlines()]


def make_pairs(out: str) -> None:
    rng = random.Random(0)
    refs: dict[str, list[str]] = {}
    mbpp = bench("mbpp/mbpp.jsonl")
    refs["python"] = [r["code"].replace("\r\n", "\n") for r in rng.sample(mbpp, 16)]
    refs["cpp"] = [f for p in CPP for f in functions(p, "C++", 6)]
    refs["javascript"] = [f for p in JS for f in functions(p, "JavaScript", 16)]
    java = bench("multipl-e/humaneval-java.jsonl")
    refs["java"] = JAVA + [r["tests"].strip().removesuffix("}").strip() for r in rng.sample(java, 8)]
    with open(out, "w") as f:
        for lang, items in refs.items():
            for i, ref in enumerate(items):
                other = items[(i + 1) % len(items)]
                preds = variants(ref, other)
                for pred in preds:
                    f.write(json.dumps({"language": lang, "reference": ref, "prediction": pred}) + "\n")
                fragment = "\n".join(ref.split("\n")[1:4])  # a middle against the renamed copy's middle
                f.write(json.dumps({"language": lang, "reference": fragment, "prediction": preds[-1]}) + "\n")
    print({k: len(v) for k, v in refs.items()})


def score(pairs: str, out: str) -> None:
    """Re-runs itself per hash seed (the seed is fixed at interpreter start)."""
    runs = []
    for seed in range(12):
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        cmd = [sys.executable, __file__, "_score", pairs]
        runs.append(
            json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
        )
    rows = [json.loads(x) for x in Path(pairs).read_text().splitlines()]
    with open(out, "w") as f:
        for i, row in enumerate(rows):
            seen = [r[i] for r in runs]
            row["reference_scores"] = seen[0]
            row["seed_stable"] = all(s == seen[0] for s in seen)
            f.write(json.dumps(row) + "\n")
    print(
        f"{len(rows)} pairs, {sum(all(r[i] == runs[0][i] for r in runs) for i in range(len(rows)))} seed-stable"
    )


def _score(pairs: str) -> None:
    import logging

    from codebleu import calc_codebleu

    logging.disable(logging.WARNING)
    out = []
    for line in Path(pairs).read_text().splitlines():
        row = json.loads(line)
        out.append(calc_codebleu([row["reference"]], [row["prediction"]], lang=row["language"]))
    print(json.dumps(out))


if __name__ == "__main__":
    {"pairs": make_pairs, "score": score, "_score": _score}[sys.argv[1]](*sys.argv[2:])
