"""GGUF export, checked against llama.cpp itself (llama-cpp-python builds it from source)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

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
CHILD = Path(__file__).with_name("llama_cpp_child.py")


def llama_cpp_run(op: str, tmp_path: Path, **kw) -> dict:
    """Run one llama.cpp operation in a child process: a crash there fails this test with the signal's
    name, and the rest of the suite runs on."""
    out = tmp_path / f"llama-{op}.json"
    request = json.dumps({"op": op, "out": str(out), **kw})
    r = subprocess.run(
        [sys.executable, str(CHILD)], input=request, capture_output=True, text=True, timeout=600
    )
    if r.returncode < 0:
        pytest.fail(
            f"llama.cpp died with {signal.Signals(-r.returncode).name} in {op} {kw.get('gguf', '')}: a llama.cpp "
            f"built with AMX crashes on q8_0 on Sapphire Rapids-class CPUs (docs/editors.md)\n{r.stderr[-2000:]}"
        )
    if r.returncode:
        pytest.fail(f"llama.cpp's {op} exited {r.returncode}:\n{r.stderr[-2000:]}")
    return json.loads(out.read_text())


def test_a_crash_in_llama_cpp_fails_the_test_with_its_signal(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="died with SIGSEGV in die"):
        llama_cpp_run("die", tmp_path, sig="SIGSEGV")
    print(llama_cpp_run("system_info", tmp_path)["info"])


@pytest.fixture(scope="module")
def decisive(tmp_path_factory, bpe_dir) -> Path:
    """A random model whose logits are far apart (init std 0.3), so greedy choices are not near ties."""
    return make_checkpoint(tmp_path_factory.mktemp("decisive"), bpe_dir, std=0.3)


def _tokens_agree(checkpoint: Path, gguf: Path) -> None:
    from codemill.data.tokenizer import load_tokenizer

    tok = load_tokenizer(checkpoint)
    texts = [f.read_text(errors="replace") for f in FILES if f.exists()]
    assert len(texts) >= 20
    # sentinel text stays text in both; a PII placeholder curation wrote is one id in both
    texts.append("s = '<fim_prefix>x<file_sep>' + '<EMAIL>'  # 12345 ünïcödé 世界\r\n\tend\n")
    theirs = llama_cpp_run("tokenize", gguf.parent, gguf=str(gguf), texts=texts)["ids"]
    assert theirs == tok.encode_batch(texts)


def _greedy(gguf: Path, prompt: list[int], n: int) -> list[int]:
    return llama_cpp_run("greedy", gguf.parent, gguf=str(gguf), prompt=prompt, n=n, n_ctx=512)["tokens"]


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
    gguf = tmp_path / "m.gguf"
    theirs = np.load(
        llama_cpp_run("logits", tmp_path, gguf=str(gguf), ids=ids, n_ctx=512, npy=str(tmp_path / "l.npy"))[
            "npy"
        ]
    )
    print(f"max |logit difference| {np.abs(ours - theirs).max():.2e}")
    assert np.abs(ours - theirs).max() < 1e-2
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    # a FIM prompt laid out with the sentinels llama.cpp knows by id: same 32 greedy tokens
    prompt = encode(get_format("codemill").prompt(text[:600], text[600:1200], path="textwrap.py"), engine.tok)
    want = engine.complete(prompt, max_tokens=32).tokens
    assert len(want) >= 16 and _greedy(gguf, prompt, 32) == want


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
    assert len(want) >= 16 and _greedy(tmp_path / "aix.gguf", prompt, 32) == want


def test_smaller_dtypes_load_and_q8_0_greedy_is_reported(decisive, tmp_path):
    engine = Engine(decisive)
    text = (STDLIB / "textwrap.py").read_text()
    prompt = encode(get_format("codemill").prompt(text[:600], text[600:1200], path="textwrap.py"), engine.tok)
    want = engine.complete(prompt, max_tokens=32).tokens
    sizes = {}
    for dtype in ("f16", "bf16", "q8_0"):
        info = export_gguf(decisive, tmp_path / f"{dtype}.gguf", dtype)
        got = _greedy(tmp_path / f"{dtype}.gguf", prompt, 32)
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
