"""Scores with their exact definitions (notes/eval.md §4)."""

from __future__ import annotations

import functools
import keyword
import re

import numpy as np

from codemill.errors import UserError


def pass_at_k(n: list[int], c: list[int | bool], k: int) -> float:
    """The unbiased pass@k estimator (Chen et al. 2021), averaged over problems: 1 - C(n-c, k) / C(n, k)
    per problem with n samples of which c passed; greedy n = 1 gives the fraction passed."""
    scores = []
    for ni, ci in zip(n, c, strict=True):
        ci = int(ci)
        if ni < k:
            raise UserError(f"pass@{k} needs at least {k} samples per problem, got {ni}")
        if ni - ci < k:
            scores.append(1.0)
        else:
            scores.append(1.0 - float(np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1))))
    return float(np.mean(scores)) if scores else 0.0


@functools.cache
def _bleu(order: int):
    import logging

    from sacrebleu.metrics import BLEU

    logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # it recommends effective_order; FIM-Eval does not
    return BLEU(max_ngram_order=order, smooth_method="none", tokenize="13a")


def bleu4(prediction: str, reference: str) -> float:
    """aiXcoder FIM-Eval's per-sample BLEU-4 (0-100): 13a tokens, no smoothing, brevity penalty, the
    maximum order lowered to the reference's length when it has fewer than 4 tokens, 100 on an exact
    match and 0 when either side is empty. Computed by sacrebleu."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    p, r = prediction.strip(), reference.strip()
    if not p or not r:
        return 0.0
    if p == r:
        return 100.0
    return _bleu(min(4, len(Tokenizer13a()(r).split()))).sentence_score(p, [r]).score


def edit_similarity(prediction: str, reference: str) -> float:
    """0-100: rapidfuzz's `fuzz.ratio` (normalized Indel distance) of the stripped strings, as a float;
    CrossCodeEval's scripts round fuzzywuzzy's ratio to an integer per sample."""
    from rapidfuzz import fuzz

    return float(fuzz.ratio(prediction.strip(), reference.strip()))


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS = {
    "Python": set(keyword.kwlist) | {"self", "True", "False", "None"},
    "Java": {
        "abstract", "assert", "boolean", "break", "byte", "case", "catch", "char", "class", "const", "continue",
        "default", "do", "double", "else", "enum", "extends", "final", "finally", "float", "for", "goto", "if",
        "implements", "import", "instanceof", "int", "interface", "long", "native", "new", "package", "private",
        "protected", "public", "return", "short", "static", "strictfp", "super", "switch", "synchronized", "this",
        "throw", "throws", "transient", "try", "void", "volatile", "while", "true", "false", "null", "var",
    },
    "TypeScript": {
        "break", "case", "catch", "class", "const", "continue", "debugger", "default", "delete", "do", "else",
        "enum", "export", "extends", "false", "finally", "for", "function", "if", "import", "in", "instanceof",
        "new", "null", "return", "super", "switch", "this", "throw", "true", "try", "typeof", "var", "void",
        "while", "with", "let", "static", "yield", "await", "async", "of", "as", "interface", "type", "any",
        "number", "string", "boolean", "undefined", "implements", "private", "protected", "public", "readonly",
    },
    "C#": {
        "abstract", "as", "base", "bool", "break", "byte", "case", "catch", "char", "checked", "class", "const",
        "continue", "decimal", "default", "delegate", "do", "double", "else", "enum", "event", "explicit",
        "extern", "false", "finally", "fixed", "float", "for", "foreach", "goto", "if", "implicit", "in", "int",
        "interface", "internal", "is", "lock", "long", "namespace", "new", "null", "object", "operator", "out",
        "override", "params", "private", "protected", "public", "readonly", "ref", "return", "sbyte", "sealed",
        "short", "sizeof", "static", "string", "struct", "switch", "this", "throw", "true", "try", "typeof",
        "uint", "ulong", "unchecked", "unsafe", "ushort", "using", "var", "virtual", "void", "volatile", "while",
    },
}  # fmt: skip


def identifiers(code: str, language: str) -> list[str]:
    return [t for t in _IDENT.findall(code) if t not in KEYWORDS.get(language, set())]


def line_match(prediction: str, reference: str) -> bool:
    """CrossCodeEval's exact match: equal lists of non-empty stripped lines."""
    lines = lambda s: [x.strip() for x in s.splitlines() if x.strip()]  # noqa: E731
    return lines(prediction) == lines(reference)


def identifier_scores(prediction: str, reference: str, language: str) -> tuple[bool, float]:
    """(identifier exact match, identifier F1 over sets), CrossCodeEval's definitions."""
    p, r = identifiers(prediction, language), identifiers(reference, language)
    if not p and not r:
        return True, 1.0
    common = len(set(p) & set(r))
    if common == 0:
        return p == r, 0.0
    precision, recall = common / len(set(p)), common / len(set(r))
    return p == r, 2 * precision * recall / (precision + recall)
