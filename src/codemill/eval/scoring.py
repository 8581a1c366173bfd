"""How each suite scores a completion against its task's target (eval/suites.py names the scorer
per suite); programs are run by the runner, apart."""

from __future__ import annotations

from codemill.eval.codebleu import KEYS as CODEBLEU_LANGS
from codemill.eval.codebleu import code_bleu, combine
from codemill.eval.metrics import bleu4, edit_similarity, identifier_scores, line_match


def text_scores(task, completion: str) -> dict:
    """FIM-Eval: the whole completion against the reference middle; CodeBLEU in both data-flow
    conventions (eval/codebleu.py) where it is defined."""
    target = task.target
    out = {
        "exact_match": completion.strip() == target.strip(),
        "bleu4": bleu4(completion, target),
        "edit_similarity": edit_similarity(completion, target),
        "chars": [len(completion.strip()), len(target)],
    }
    if task.language in CODEBLEU_LANGS:
        terms = code_bleu([target], [completion], task.language)
        out["codebleu"] = 100 * terms.pop("codebleu")
        out["codebleu_codexglue"] = 100 * combine(terms, dataflow="codexglue")
        out["codebleu_terms"] = terms
    return out


def statement_scores(task, completion: str) -> dict:
    """CrossCodeEval: the completion cut to one statement against the target line."""
    pred = statement(completion, task.language)
    ident_em, ident_f1 = identifier_scores(pred, task.target, task.language)
    return {
        "prediction": pred,
        "exact_match": line_match(pred, task.target),
        "edit_similarity": edit_similarity(pred, task.target),
        "identifier_em": ident_em,
        "identifier_f1": 100 * ident_f1,
        "context_files": [p for p, _ in task.request.context],
    }


def first_line_match(task, completion: str) -> dict:
    """SantaCoder-FIM: the first non-empty line against the one-line middle."""
    return {"exact_match": first_line(completion).strip() == task.target.strip()}


def statement(completion: str, language: str) -> str:
    """CrossCodeEval's statement-level truncation: the first line; in Java, C# and TypeScript also cut
    after the first `;`, `{` or `}`."""
    text = completion.lstrip("\n").split("\n", 1)[0]
    if language != "Python":
        cut = [i for i in (text.find(c) for c in ";{}") if i != -1]
        text = text[: min(cut) + 1] if cut else text
    return text


def first_line(text: str) -> str:
    """SantaCoder-FIM's middle is one line: the first non-empty line of the completion."""
    return next((line for line in text.splitlines() if line.strip()), "")
