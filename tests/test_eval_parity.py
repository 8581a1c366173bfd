"""Each metric as its benchmark's reference code computes it, on fixed pairs whose expected values
came from running the reference code itself (cceval @25f9cab with fuzzywuzzy 0.18 and
python-Levenshtein; bigcode-evaluation-harness @8fc5bae6; aiXcoder-FIM-Evaluation @bd3771e).
benchmarks/eval_parity.py re-runs the comparison on a few hundred pairs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from codemill.eval.codebleu import code_bleu, tokens_13a
from codemill.eval.metrics import (
    cceval_edit_similarity,
    cceval_identifiers,
    cceval_strip_comments,
    identifier_scores,
)
from codemill.eval.models import truncate
from codemill.eval.scoring import first_line_match, statement, statement_scores, text_scores, whole_match


def cceval(prediction: str, target: str, language: str = "Python", prompt: str = "") -> dict:
    task = SimpleNamespace(
        target=target, language=language, request=SimpleNamespace(prefix=prompt, context=[])
    )
    return statement_scores(task, prediction)


def test_comments_are_removed_from_both_sides_before_em_and_es():
    s = cceval("x = f(a)  # call f", "x = f(a)")
    assert s["exact_match"] and s["edit_similarity"] == 100.0
    s = cceval("int x = 1; // one", "int x = 1;", "Java")
    assert s["exact_match"] and s["prediction"] == "int x = 1;"
    # the same two rules in every language, strings or not: `#` and `//` end the line's code
    assert cceval_strip_comments('String c = "#fff";') == 'String c = "'
    assert cceval_strip_comments("a = b // c  # d\nint y; // e") == "a = b \nint y; "


def test_string_literals_hold_no_identifiers():
    assert cceval_identifiers("print(\"hello world\", x, 'it\\'s')", "Python") == ["print", "x"]


def test_identifiers_start_with_a_letter_or_underscore():
    assert cceval_identifiers("mask = 0x1fc7 & _m2", "Python") == ["mask", "_m2"]


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("Python", "a = self.x if True else False or None", ["a", "self", "x", "True", "False"]),
        ("Java", "x = true ? null : false; this.y", ["x", "true", "null", "false", "y"]),
        (
            "TypeScript",
            "let n: number = await f(s as string) as any; true",
            ["n", "number", "await", "f", "s", "as", "string", "as", "any", "true"],
        ),
        ("C#", "var p = stackalloc int[4]; string s", ["var", "p", "s"]),
    ],
)
def test_keyword_lists_are_ccevals_per_language(language, code, expected):
    assert cceval_identifiers(code, language) == expected


def test_identifier_f1_is_0_when_neither_side_has_an_identifier():
    assert identifier_scores("1 + 2", "3", "Python") == (True, 0.0)
    assert identifier_scores("self.fit(x)", "self.fit(y)", "Python") == (False, 2 / 3)
    s = cceval("return 1", "return 2")
    assert s["identifier_em"] and s["identifier_f1"] == 0.0 and not s["exact_match"]


def test_python_grows_the_completion_until_the_file_parses_at_a_line_end():
    assert statement("def f(x):\n    y = ", "g(x)\n    return y\n", "Python") == "g(x)"
    assert statement("x = ", "foo(1,\n    2)\nprint(x)", "Python") == "foo(1,\n    2)"
    # never parses at a line end: the whole completion, as cceval (its index error is caught)
    assert statement("x = ", "foo(1,\n    2", "Python") == "foo(1,\n    2"
    assert statement("def f():\n    return ", "a +\n", "Python") == "a +\n"
    s = cceval("g(x)\n    return y\n", "g(x)", prompt="def f(x):\n    y = ")
    assert s["exact_match"] and s["prediction"] == "g(x)"


def test_java_family_cuts_at_the_first_bracket_or_semicolon_across_lines():
    for language in ("Java", "C#", "TypeScript"):
        assert statement("", "foo(a,\n b);\nc;", language) == "foo(a,\n b);"
        assert statement("", "if (x) {\n y", language) == "if (x) {"
        assert statement("", "a +\nb", language) == "a +\nb"  # none: the whole completion
        assert statement("", ";x\ny", language) == ";x\ny"  # at index 0: cceval keeps it all


def test_edit_similarity_is_rounded_per_sample_half_to_even():
    assert cceval_edit_similarity("abcdefgh", "abcdeXYZ") == 62  # 62.5
    assert cceval_edit_similarity("abcdefgh", "abcdefgX") == 88  # 87.5
    assert cceval_edit_similarity("", "") == 100 and cceval_edit_similarity(" a ", "") == 0
    assert cceval("abcdefgh", "abcdeXYZ")["edit_similarity"] == 62.0


def fim(target: str, language: str = "Python") -> SimpleNamespace:
    return SimpleNamespace(target=target, language=language)


def test_santacoder_fim_matches_the_whole_generation_cut_at_stop_words():
    task = fim("x = 1")
    assert not whole_match(task, "x = 1\ny = 2")["exact_match"]  # bigcode: the whole generation
    assert first_line_match(task, "x = 1\ny = 2")["exact_match"]  # Qwen: its first line
    stops = ("<|endoftext|>", "<|filename|>")  # bigcode's SantaCoderFIM stop words
    assert whole_match(task, truncate("  x = 1\n<|endoftext|>junk", stops))["exact_match"]


def test_codebleu_of_an_identical_prediction_is_100_with_13a_tokens():
    code = "except ValueError:\n    pass"
    assert text_scores(fim(code), code)["codebleu"] == 100.0
    # whitespace tokens (CodeXGLUE's) give 3 tokens and no 4-gram: the n-gram terms fall short
    assert code_bleu([code], [code], "python")["ngram_match"] < 0.6
    assert text_scores(fim(code), code)["codebleu_codexglue"] < 100.0


def test_13a_tokens_are_aixcoders():
    assert tokens_13a("x.append(a[i]-1)") == ["x", ".", "append", "(", "a", "[", "i", "]", "-1", ")"]
    assert tokens_13a("a, 3.14 &amp; b-\nc") == ["a", ",", "3.14", "&", "bc"]


def test_reports_name_the_rule_behind_each_number():
    from codemill.eval.tables import paper_tables

    def run(suite: str, em: float) -> dict:
        return {"suite": suite, "model": "m", "settings": {}, "summary": {"Python": {"exact_match": em}}}

    text = paper_tables([run("santacoder-fim", 40.0), run("santacoder-fim-first-line", 50.0)])
    assert "the whole completion cut at the stop words (bigcode)" in text and "(Qwen)" in text
    assert "| m | 40.0 | - | - | - |" in text and "| m (first line) | 50.0 | - | - | - |" in text
    assert "as cceval's eval_metric.py" in paper_tables([run("crosscodeeval", 1.0)])
