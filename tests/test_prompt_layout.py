"""One prompt layout from training to the editor (issue 33): repository-level FIM as the training
stream lays it out (`data.repo_context`), as codemill serve builds it from a llama-server /infill
body, and as llama-server itself builds it (tests/llama_server_infill.py, its rules ported) agree
token for token."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import write_corpus
from llama_server_infill import format_prompt_infill, kept_extra

from codemill.data.config import DataConfig
from codemill.data.stats import StreamStats
from codemill.data.stream import TrainingStream
from codemill.serve.engine import Engine
from codemill.serve.http import InfillBody, parse_infill

UTIL = "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n"
MODELS = "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
MAIN = (
    "from app.util import clamp\nfrom app.models import Point\n\n\ndef run(p):\n    return clamp(p.x, 0, 9)\n"
)
ROOMY = {"n_ctx": 100_000, "n_batch": 8192, "n_predict": 16}  # llama-server settings that cut nothing


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Engine(tiny_checkpoint)


def served(engine, body: dict) -> list[int]:
    return parse_infill(InfillBody(**body), engine.prompter, 64).ids


@pytest.mark.parametrize("extra", [False, True])
@pytest.mark.parametrize("typed", ["", "    return cl"])
@pytest.mark.parametrize("path", [None, "app/main.py"])
def test_serve_builds_what_llama_server_builds(engine, extra, typed, path):
    body = {"input_prefix": MAIN[:100], "input_suffix": MAIN[100:], "prompt": typed, "n_predict": 16}
    if extra:
        body["input_extra"] = [{"filename": "app/util.py", "text": UTIL}, {"text": MODELS}]  # no name: "tmp"
    if path:
        body["path"] = path  # codemill's extension; llama-server names every current file "filename"
    ours = served(engine, body)
    theirs = format_prompt_infill(engine.tok, engine.fmt, body, **ROOMY, current=path or "filename")
    assert ours == theirs, (engine.tok.decode(ours), engine.tok.decode(theirs))
    assert engine.tok.decode(ours).startswith("<repo_name>myproject\n")


def test_training_serve_and_llama_server_agree_on_a_repository(tmp_path, engine):
    """A repository whose first two files the stream lays out as context and whose third it makes a
    FIM document: the window up to `<fim_middle>` is what serve and llama-server build from an
    editor's request with those two files as snippets."""
    files = {"app/util.py": UTIL, "app/models.py": MODELS, "app/main.py": MAIN}
    corpus = write_corpus(tmp_path / "c", {"myproject": files})
    tok, fmt = engine.tok, engine.fmt
    for seed in range(200):
        cfg = DataConfig(seq_len=1024, seed=seed, code_objectives={"fim": 1.0}, fim_spm_rate=0.0,
                         repo_context=0.6, shuffle_repos=False)  # fmt: skip
        docs = [d for make in TrainingStream(corpus, tok, cfg).plan("code", 0, 0) for d in make()]
        kinds = [(d.path, d.objective) for d in docs[1:]]
        if [o for _, o in kinds] == ["ntp", "ntp", "fim"]:
            break
    else:
        pytest.fail("no seed lays out two context files and then a FIM file")
    stats = StreamStats()
    window = next(iter(TrainingStream(corpus, tok, cfg, stats=stats, epochs=1)))["tokens"].tolist()
    trained = window[: window.index(tok.token_id(fmt.middle)) + 1]
    fim = docs[-1].sample
    body = {"input_prefix": fim.prefix, "input_suffix": fim.suffix, "n_predict": 16, "path": docs[-1].path,
            "input_extra": [{"filename": p, "text": files[p]} for p, _ in kinds[:2]]}  # fmt: skip
    assert served(engine, body) == trained, (tok.decode(served(engine, body)), tok.decode(trained))
    assert format_prompt_infill(tok, fmt, body, **ROOMY, current=docs[-1].path) == trained
    assert stats.summary()["events"]["repo_context_file"] == 2


def test_prompts_fit_the_trained_window_and_drop_old_snippets_whole(tmp_path, tiny_checkpoint):
    """A checkpoint trained at 128 tokens: serve fits its prompts to 128, keeps the file being
    completed, and keeps the newest snippets whole, dropping the oldest, never cutting one to an
    empty file."""
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / "codemill.json").write_text(json.dumps({"format": "codemill", "data": {"seq_len": 128}}))
    engine = Engine(ckpt)
    assert engine.max_len == 128
    snippets = [
        {"filename": f"lib/m{i}.py", "text": f"def f{i}(x):\n    return x + {i}\n"} for i in range(12)
    ]
    body = {"input_prefix": "import lib\n\n\ndef g():\n    return ", "input_suffix": "\n", "n_predict": 16,
            "input_extra": snippets}  # fmt: skip
    ids = served(engine, body)
    text = engine.tok.decode(ids)
    assert len(ids) <= 128 - 16 and text.endswith("<fim_suffix>\n<fim_middle>") and "def g():" in text
    kept = [s for s in snippets if f"<file_sep>{s['filename']}\n{s['text']}" in text]
    assert kept and kept == snippets[len(snippets) - len(kept) :]  # the newest, whole
    assert text.count("<file_sep>") == len(kept) + 1  # no snippet left as an empty file


def test_llama_server_settings_that_keep_the_context():
    """docs/editors.md's settings for a model trained at N tokens (`-c N -b N/2 -n 64`): what the
    port says llama-server keeps, against its defaults (-b 2048, -n -1) which keep none below 2 k."""
    for n in (512, 1024, 2048):
        assert kept_extra(10_000, n_ctx=n, n_batch=2048, n_predict=-1) == max(0, n - 2046)
        assert kept_extra(10_000, n_ctx=n, n_batch=n // 2, n_predict=64) == n // 2 - 128
