"""GGUF export, checked against llama.cpp itself (llama-cpp-python builds it from source)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import torch
from conftest import STDLIB, make_checkpoint

from codemill.formats import encode, get_format
from codemill.model.gguf import export_gguf
from codemill.serve.engine import Engine

INCLUDE = Path(sysconfig.get_paths()["include"])  # C headers: Python's own
FILES = [
    *(STDLIB / n for n in ("json/decoder.py", "textwrap.py", "shlex.py", "colorsys.py", "bisect.py")),
    *(STDLIB / n for n in ("csv.py", "difflib.py", "heapq.py", "locale.py", "tokenize.py", "calendar.py")),
    *(STDLIB / "encodings" / n for n in ("cp1252.py", "koi8_r.py", "mac_greek.py", "cp037.py")),
    *(INCLUDE / n for n in ("Python.h", "object.h", "unicodeobject.h", "longobject.h", "pyport.h")),
]


def _llama(path: Path, **kw):
    # f32 KV cache (llama.cpp keeps f16 by default), so an f32 export is compared in f32 throughout
    return llama_cpp.Llama(model_path=str(path), n_threads=2, verbose=False, type_k=0, type_v=0, **kw)


@pytest.fixture(scope="module")
def decisive(tmp_path_factory, bpe_dir) -> Path:
    """A random model whose logits are far apart (init std 0.3), so greedy choices are not near ties."""
    return make_checkpoint(tmp_path_factory.mktemp("decisive"), bpe_dir, std=0.3)


def _tokens_agree(checkpoint: Path, gguf: Path) -> None:
    from codemill.data.tokenizer import load_tokenizer

    tok, llm = load_tokenizer(checkpoint), _llama(gguf, vocab_only=True)
    texts = [f.read_text(errors="replace") for f in FILES if f.exists()]
    assert len(texts) >= 20
    # sentinel text stays text in both; a PII placeholder curation wrote is one id in both
    texts.append("s = '<fim_prefix>x<file_sep>' + '<EMAIL>'  # 12345 ünïcödé 世界\r\n\tend\n")
    ours = tok.encode_batch(texts)
    for text, ids in zip(texts, ours, strict=True):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids


def test_gguf_tokenizes_every_file_as_codemill_does(tiny_checkpoint, tmp_path):
    out = export_gguf(tiny_checkpoint, tmp_path / "m.gguf", "f32")
    assert out["tokenizer"] == "qwen2" and out["fim_sep"] > 0 and out["fim_rep"] > 0
    _tokens_agree(tiny_checkpoint, tmp_path / "m.gguf")


def test_gguf_logits_and_greedy_fim_match_codemill(decisive, tmp_path):
    export_gguf(decisive, tmp_path / "m.gguf", "f32")
    engine = Engine(decisive)
    text = (STDLIB / "textwrap.py").read_text()
    ids = engine.tok.encode_batch([text])[0][:256]
    with torch.no_grad():
        ours = engine.model(torch.tensor([ids]))[0].numpy()
    llm = _llama(tmp_path / "m.gguf", n_ctx=512, logits_all=True)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    print(f"max |logit difference| {np.abs(ours - theirs).max():.2e}")
    assert np.abs(ours - theirs).max() < 1e-2
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    # a FIM prompt laid out with the sentinels llama.cpp knows by id: same 32 greedy tokens
    prompt = encode(get_format("codemill").prompt(text[:600], text[600:1200], path="textwrap.py"), engine.tok)
    want = engine.complete(prompt, max_tokens=32).tokens
    assert len(want) >= 16 and _greedy(llm, prompt, 32) == want


def _vocab(llm):
    return llama_cpp.llama_model_get_vocab(llm._model.model)


def _greedy(llm, prompt: list[int], n: int) -> list[int]:
    """llama.cpp's greedy tokens (argmax of its logits), stopping at its end-of-generation set."""
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    while len(out) < n:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if llama_cpp.llama_vocab_is_eog(_vocab(llm), token):
            break
        out.append(token)
        llm.eval([token])
    return out


def test_aixcoder_sentencepiece_checkpoint_runs_the_same_in_llama_cpp(aix_sp, tmp_path):
    ckpt = make_checkpoint(tmp_path / "aix", aix_sp.parent, fmt="aixcoder", std=0.3, vocab_size=600)
    info = export_gguf(ckpt, tmp_path / "aix.gguf", "f32")
    assert info["format"] == "aixcoder" and info["bos"] == 1
    _tokens_agree(ckpt, tmp_path / "aix.gguf")
    engine = Engine(ckpt)
    text = (STDLIB / "shlex.py").read_text()
    prompt = encode(
        get_format("aixcoder").prompt(text[:500], text[500:900], path="shlex.py"), engine.tok, 400
    )
    want = engine.complete(prompt, max_tokens=32).tokens
    assert (
        len(want) >= 16
        and _greedy(_llama(tmp_path / "aix.gguf", n_ctx=512, logits_all=True), prompt, 32) == want
    )


def test_smaller_dtypes_load_and_q8_0_greedy_is_reported(decisive, tmp_path):
    engine = Engine(decisive)
    text = (STDLIB / "textwrap.py").read_text()
    prompt = encode(get_format("codemill").prompt(text[:600], text[600:1200], path="textwrap.py"), engine.tok)
    want = engine.complete(prompt, max_tokens=32).tokens
    sizes = {}
    for dtype in ("f16", "bf16", "q8_0"):
        info = export_gguf(decisive, tmp_path / f"{dtype}.gguf", dtype)
        got = _greedy(_llama(tmp_path / f"{dtype}.gguf", n_ctx=512, logits_all=True), prompt, 32)
        same = next(
            (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want))
        )
        print(
            f"{dtype}: {info['bytes']:,} bytes, greedy agrees with f32 codemill for {same} of {len(want)} tokens"
        )
        sizes[dtype] = info["bytes"]
        assert got  # it loads and decodes
    assert sizes["q8_0"] < sizes["f16"] == sizes["bf16"]


def test_export_refuses_a_tokenizer_llama_cpp_cannot_split(code_corpus, tmp_path):
    from typer.testing import CliRunner

    from codemill.cli import app
    from codemill.data.tokenizer import chunks, corpus_texts, save_tokenizer, train_bpe

    fmt = get_format("codemill")
    tok = train_bpe(chunks(corpus_texts(code_corpus, 300_000)), 600, fmt, False, pretokenizer="codemill")
    save_tokenizer(tok, tmp_path / "tok", fmt)
    ckpt = make_checkpoint(tmp_path / "ckpt", tmp_path / "tok", vocab_size=640)
    result = CliRunner().invoke(app, ["export", "gguf", str(ckpt), "--out", str(tmp_path / "m.gguf")])
    assert result.exit_code == 2 and "--pretokenizer" in result.output and not (tmp_path / "m.gguf").exists()
