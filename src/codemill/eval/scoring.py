"""How each suite scores a completion against its task's target (eval/suites.py names the scorer
per suite), each as its benchmark's reference code computes it so that numbers compare with
published ones (benchmarks/eval_parity.py runs the reference code beside these); programs are run
by the runner, apart.

- FIM-Eval: aiXcoder's `run_evaluate.py` (aiXcoder-FIM-Evaluation @bd3771e): exact match of the
  stripped texts, BLEU-4, CodeBLEU with its n-gram terms over 13a tokens.
- CrossCodeEval: cceval's `eval_metric.py` (amazon-science/cceval @25f9cab): its post-processing of
  the completion, comments removed from both sides, then EM, ES and identifier EM / F1.
- SAFIM: gonglinyuan/safim's `evaluate.py` (@9543286), in eval/safim.py (`own_judge`).
- SantaCoder-FIM: bigcode-evaluation-harness's `santacoder_fim.py` (@8fc5bae6): the whole
  completion, cut at the stop words, stripped, equal to the stripped reference. Qwen's variant (the
  first non-empty line) is the `santacoder-fim-first-line` suite.
"""

from __future__ import annotations

from codemill.eval.codebleu import LANGUAGES as CODEBLEU_LANGS
from codemill.eval.codebleu import code_bleu, combine, ngram_terms, tokens_13a
from codemill.eval.metrics import (
    bleu4,
    cceval_edit_similarity,
    cceval_lines,
    cceval_strip_comments,
    edit_similarity,
    identifier_scores,
)


def text_scores(task, completion: str) -> dict:
    """FIM-Eval: the whole completion against the reference middle. `codebleu` is aiXcoder's (13a
    tokens for the n-gram terms, no data flow scores 1); `codebleu_codexglue` is CodeXGLUE's
    (whitespace tokens, no data flow scores 0)."""
    target = task.target
    out = {
        "exact_match": completion.strip() == target.strip(),
        "bleu4": bleu4(completion, target),
        "edit_similarity": edit_similarity(completion, target),
        "chars": [len(completion.strip()), len(target)],
    }
    if task.language in CODEBLEU_LANGS:
        terms = code_bleu([target], [completion], task.language, tokenizer=tokens_13a)
        out["codebleu"] = 100 * terms.pop("codebleu")
        xglue = ngram_terms([target], [completion], task.language)  # whitespace tokens
        out["codebleu_codexglue"] = 100 * combine({**terms, **xglue}, dataflow="codexglue")
        out["codebleu_terms"] = terms
    return out


def statement_scores(task, completion: str) -> dict:
    """CrossCodeEval as cceval: the completion cut to one statement (`statement`), then comments
    removed from it and from the target; EM of their lines, ES rounded per sample, identifiers."""
    pred = cceval_strip_comments(statement(task.request.prefix, completion, task.language))
    target = cceval_strip_comments(task.target)
    ident_em, ident_f1 = identifier_scores(pred, target, task.language)
    return {
        "prediction": pred,
        "exact_match": cceval_lines(pred) == cceval_lines(target),
        "edit_similarity": float(cceval_edit_similarity(pred, target)),
        "identifier_em": ident_em,
        "identifier_f1": 100 * ident_f1,
        "context_files": [p for p, _ in task.request.context],
    }


def whole_match(task, completion: str) -> dict:
    """SantaCoder-FIM as bigcode: the whole completion (already cut at the stop words) stripped."""
    return {"exact_match": completion.strip() == task.target.strip()}


def first_line_match(task, completion: str) -> dict:
    """SantaCoder-FIM as Qwen reports it: the first non-empty line against the one-line middle."""
    return {"exact_match": first_line(completion).strip() == task.target.strip()}


def own_judge(task, completion: str) -> dict:
    """A suite that judges itself (SAFIM, eval/safim.py): its post-processing and verdict."""
    return task.judge(completion)


def setup_code(task, completion: str) -> dict:
    """MBPP: marks the samples whose program ran the task's `test_setup_code`, which bigcode skips."""
    return {"test_setup_code": True} if task.request.meta.get("test_setup_code") else {}


def statement(prompt: str, completion: str, language: str) -> str:
    """cceval's `postprocess_code_lines`. Python: the shortest prefix of the completion that is
    followed by a line end and after which prompt + prefix parses without an ERROR node (tree-sitter;
    MISSING nodes allowed), right-stripped; else the whole completion. Java, C# and TypeScript: up to
    and including the first `;`, `{` or `}`, across lines; the whole completion when there is none
    or when it is the first character (cceval tests the index for truth)."""
    if language == "Python":
        for i in range(len(completion) - 1):
            if completion[i + 1] == "\n" and _parses(prompt + completion[: i + 1]):
                return completion[: i + 1].rstrip()
        return completion
    end = next((i for i, c in enumerate(completion) if c in ";{}"), None)
    return completion[: end + 1] if end else completion


def _parses(code: str) -> bool:
    """No ERROR node in tree-sitter's Python tree (a fresh parser: scorers run in threads)."""
    import tree_sitter

    from codemill.langs import ts_parser

    tree = tree_sitter.Parser(ts_parser("Python").language).parse(code.encode("utf8"))
    todo = [tree.root_node]
    while todo:
        node = todo.pop()
        if node.is_error:
            return False
        todo += [c for c in node.children if c.has_error]  # subtrees without errors hold no ERROR node
    return True


def first_line(text: str) -> str:
    """The first non-empty line of a completion."""
    return next((line for line in text.splitlines() if line.strip()), "")
