"""Tokenizers and formats: round trips, unforgeable sentinels, golden PSM / SPM layouts."""

from __future__ import annotations

import random

import pytest

from codemill.data.tokenizer import (
    PRETOKENIZERS,
    ChunkCache,
    HFTokenizer,
    load_tokenizer,
    pre_tokenizer,
    pretokenizer_name,
    train_bpe,
)
from codemill.formats import FORMATS, PII_TOKENS, get_format

PREFIX = "def area(r):\n    if r <= 0:\n"
MIDDLE = "        return 0"
SUFFIX = "\n    return 3.14 * r * r\n"


def encode_parts(tok, parts) -> list[int]:
    texts = [p.text for p in parts if p.role != "special"]
    enc = iter(tok.encode_batch(texts))
    return [i for p in parts for i in ([tok.token_id(p.text)] if p.role == "special" else next(enc))]


def test_byte_round_trip_on_any_text(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    rng = random.Random(0)
    alphabet = "\t\n\r \x00\x7f\u00a0\u200b\u3000é世😀ſ\ufeffaZ09_{}()<>|\\'\"#"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))) for _ in range(200)]
    texts += [
        "x\r\n\ty  = 12345\n\n\n        return\f",
        "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    ]
    for text, ids in zip(texts, tok.encode_batch(texts), strict=True):
        assert tok.decode(ids) == text


def test_code_splits_digits_and_the_pretokenizers_split_as_named(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    pieces = [tok.tok.id_to_token(i) for i in tok.encode_batch(["x = 2024\n        return x\n"])[0]]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["2", "0", "2", "4"]
    assert pretokenizer_name(tok.tok) == "qwen2"  # the default: llama.cpp splits text the same way
    split = lambda name: [p for p, _ in pre_tokenizer(name).pre_tokenize_str("if x:\n        return 10\n")]  # noqa: E731
    assert split("qwen2") == ["if", "Ġx", ":Ċ", "ĠĠĠĠĠĠĠ", "Ġreturn", "Ġ", "1", "0", "Ċ"]
    assert split("codemill") == [
        "if",
        "Ġx",
        ":",
        "ĊĠĠĠĠĠĠĠĠ",
        "return",
        "Ġ",
        "1",
        "0",
        "Ċ",
    ]  # ours: indent kept
    assert "10" in split("llama3")  # up to three digits together


def test_sentinel_text_in_code_never_becomes_a_sentinel(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    fmt = get_format("codemill")
    code = "s = '<fim_prefix><fim_middle><|endoftext|><file_sep>'\n"
    ids = encode_parts(tok, fmt.document(path="a.py", prefix=code))
    sentinel_ids = {tok.token_id(t) for t in fmt.specials}
    # the only specials are the ones the format inserted: file_sep at the start and eos at the end
    assert [i for i in ids if i in sentinel_ids] == [
        tok.token_id("<file_sep>"),
        tok.token_id("<|endoftext|>"),
    ]
    assert tok.decode(tok.encode_batch([code])[0]) == code


def test_pii_placeholders_are_single_ids(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    for t in PII_TOKENS:
        assert tok.encode_batch([f"x = '{t}'"])[0].count(tok.token_id(t)) == 1


def test_transformers_loads_the_tokenizer(bpe_dir):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    hf = AutoTokenizer.from_pretrained(bpe_dir)
    assert isinstance(hf, PreTrainedTokenizerFast)
    ours = load_tokenizer(bpe_dir)
    text = "import os\n\n\ndef f(x):\n    return os.path.join(x, '<fim_pad>')\n"
    assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode_batch([text])[0]
    assert hf.eos_token == "<|endoftext|>" and hf.pad_token == "<fim_pad>"
    assert hf.convert_tokens_to_ids("<fim_middle>") == ours.token_id("<fim_middle>")
    assert len(hf) == ours.vocab_size == 2000


def test_codemill_golden_layouts(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    fmt = get_format("codemill")
    psm = encode_parts(tok, fmt.document(path="geo/area.py", prefix=PREFIX, middle=MIDDLE, suffix=SUFFIX))
    spm = encode_parts(
        tok, fmt.document(path="geo/area.py", prefix=PREFIX, middle=MIDDLE, suffix=SUFFIX, spm=True)
    )
    head = "<file_sep>geo/area.py\n"
    assert (
        tok.decode(psm) == f"{head}<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>{MIDDLE}<|endoftext|>"
    )
    assert (
        tok.decode(spm) == f"{head}<fim_prefix><fim_suffix>{SUFFIX}<fim_middle>{PREFIX}{MIDDLE}<|endoftext|>"
    )
    sid = tok.token_id
    assert spm[-1] == sid("<|endoftext|>") and spm[0] == sid("<file_sep>")
    n_head = len(tok.encode_batch(["geo/area.py\n"])[0]) + 1
    assert spm[n_head : n_head + 2] == [sid("<fim_prefix>"), sid("<fim_suffix>")]
    # the inference prompt is the training document cut where the middle starts, after the repository
    # line llama-server's /infill opens with (the placeholder when the request names no repository)
    head, files, current = fmt.prompt_groups(PREFIX, SUFFIX, path="geo/area.py", spm=True)
    assert tok.decode(encode_parts(tok, head)) == "<repo_name>myproject\n" and files == []
    prompt = encode_parts(tok, current)
    assert spm[: len(prompt)] == prompt and spm[len(prompt) :] == tok.encode_batch([MIDDLE])[0] + [
        sid("<|endoftext|>")
    ]


def test_aixcoder_sentencepiece_golden_layouts(aix_sp):
    tok = load_tokenizer(aix_sp.parent)
    fmt = get_format("aixcoder")
    for piece in fmt.specials:
        assert tok.sp.id_to_piece(tok.token_id(piece)) == piece
    # segments get no dummy prefix: a suffix starting with a letter decodes without a leading space
    assert tok.decode(tok.encode_batch(["return x"])[0]) == "return x"
    header = "# the file path is: geo/area.py\n# the code file is written by Python\n"
    spm = encode_parts(
        tok, fmt.document(path="geo/area.py", prefix=PREFIX, middle=MIDDLE, suffix=SUFFIX, spm=True)
    )
    sid = tok.token_id
    assert spm[:3] == [sid("<s>"), sid("▁<AIX-SPAN-PRE>"), sid("▁<AIX-SPAN-POST>")]
    mid_at = spm.index(sid("▁<AIX-SPAN-MIDDLE>"))
    assert tok.decode(spm[3:mid_at]) == SUFFIX
    assert tok.decode(spm[mid_at + 1 : -1]) == header + PREFIX + MIDDLE
    assert spm[-1] == sid("</s>")
    psm = encode_parts(tok, fmt.document(path="geo/area.py", prefix=PREFIX, middle=MIDDLE, suffix=SUFFIX))
    post, mid = psm.index(sid("▁<AIX-SPAN-POST>")), psm.index(sid("▁<AIX-SPAN-MIDDLE>"))
    assert psm[:2] == [sid("<s>"), sid("▁<AIX-SPAN-PRE>")]
    assert tok.decode(psm[2:post]) == header + PREFIX
    assert tok.decode(psm[post + 1 : mid]) == SUFFIX and tok.decode(psm[mid + 1 : -1]) == MIDDLE


def test_every_format_builds_prompts():
    for fmt in FORMATS.values():
        parts = fmt.prompt("a = 1\n", "\nb = 2\n", path="x.py", context=[("y.py", "c = 3\n")], repo="me/r")
        roles = [p.role for p in parts]
        assert "prefix" in roles and "suffix" in roles and "middle" not in roles
        assert parts[-1] == ("prefix", "a = 1\n") if fmt.spm else parts[-1] == ("special", fmt.middle)


def test_hf_tokenizer_refuses_unknown_tokens(bpe_dir):
    with pytest.raises(ValueError, match="format"):
        HFTokenizer.load(bpe_dir / "tokenizer.json").token_id("<AIX-SPAN-PRE>")


def test_prompts_with_cross_file_snippets_fit_their_budget(bpe_dir):
    """Snippets and the file's own prefix share the prefix allowance from the cursor outwards."""
    from conftest import STDLIB

    from codemill.formats import encode

    tok = load_tokenizer(bpe_dir)
    fmt = get_format("codemill")
    files = [(f"pkg/{n}", (STDLIB / n).read_text()) for n in ("textwrap.py", "shlex.py", "colorsys.py")]
    prefix, suffix = (STDLIB / "string.py").read_text()[:6000], (STDLIB / "string.py").read_text()[6000:]
    parts = fmt.prompt(prefix, suffix, path="string.py", context=files)
    whole = encode(parts, tok)
    for budget in (300, 900, 2000):
        ids = encode(parts, tok, budget)
        assert len(ids) <= budget < len(whole)
        assert prefix[-100:] in tok.decode(ids)  # the text just before the cursor survives every cut


@pytest.mark.parametrize("name", PRETOKENIZERS)
def test_chunk_cache_gives_the_whole_texts_ids(name):
    """Cut at the lines where the pre-tokenizer always starts a piece, real files and adversarial
    whitespace tokenize exactly as whole texts; typing at the end re-tokenizes one chunk."""
    import sysconfig
    from pathlib import Path

    rng = random.Random(0)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = [f.read_text(errors="replace") for f in rng.sample(files, 40)]
    fmt = get_format("codemill")
    tok = HFTokenizer(train_bpe(texts[:20], 2000, fmt, show_progress=False, pretokenizer=name))
    cache = ChunkCache(tok, chunk=16)
    assert cache.starts is not None
    alphabet = ["\n", " ", "  ", "\t", "\r\n", "\r", "a", "bc", "1", ")", "'s", "\x0b", "\f", "\u00a0",
                "\x1c", "\x85", "\u2028", "<EMAIL>", "é", "_"]  # fmt: skip
    cases = [t[: rng.randrange(len(t))] for t in texts[20:]] + [
        t[rng.randrange(len(t)) :] for t in texts[20:]
    ]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 200))) for _ in range(300)]
    for text in cases:
        assert cache.encode_batch([text]) == tok.encode_batch([text]), repr(text[:200])
    prefix = texts[20][:5000].rstrip()  # typing goes on a line already begun
    cache.encode_batch([prefix])
    before = set(cache.ids)
    cache.encode_batch([prefix + "x"])
    assert len(set(cache.ids) - before) == 1


def test_chunk_cache_tokenizes_whole_texts_for_other_pretokenizers():
    from tokenizers import Tokenizer, models
    from tokenizers import pre_tokenizers as pt

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pt.ByteLevel(add_prefix_space=True)  # GPT-2's own: not one of ours
    cache = ChunkCache(HFTokenizer(hf), chunk=8)
    assert cache.starts is None
    text = "def f():\n    return 1\n" * 20
    assert cache.encode_batch([text]) == HFTokenizer(hf).encode_batch([text])
    assert not cache.ids
