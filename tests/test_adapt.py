"""`codemill adapt` (issue 34): a base model's own tokenizer and FIM format, part of the user's code
held out (files when there are few repositories), the base and the adapted model scored on the same
held-out tasks, and wrong input said plainly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import MIT, POLYGLOT, STDLIB, write_corpus
from test_wrong_use import cli

from codemill.data.config import DataConfig
from codemill.data.stream import TrainingStream
from codemill.data.tokenizer import HFTokenizer, corpus_texts, load_tokenizer, train_bpe
from codemill.errors import UserError
from codemill.eval.builders import build_crossfile, build_fim
from codemill.formats import FORMATS, detect_format


@pytest.mark.parametrize("name", ["codemill", "starcoder2", "qwen2.5-coder", "deepseek-coder", "codellama"])
def test_the_format_is_read_from_the_tokenizers_special_tokens(name, code_corpus):
    texts = list(corpus_texts(code_corpus, 100_000))
    tok = HFTokenizer(train_bpe(texts, 600, FORMATS[name], show_progress=False))
    assert detect_format(tok).name == name


def test_a_tokenizer_without_fim_tokens_names_the_families(code_corpus):
    from tokenizers import Tokenizer, models

    bare = HFTokenizer(Tokenizer(models.BPE()))
    with pytest.raises(
        UserError, match=r"none of codemill, aixcoder.*--format.*NTP-only adaptation is not built"
    ):
        detect_format(bare)


def test_files_held_out_of_few_repositories_never_reach_training(tmp_path, bpe_dir):
    repos = {
        "team/app": POLYGLOT,
        "team/lib": {f"lib/{p.name}": p.read_text() for p in sorted((STDLIB / "json").glob("*.py"))},
    }
    corpus = write_corpus(tmp_path / "c", repos)
    fim = build_fim(corpus, tmp_path / "fim", holdout=0.4, per_type=5, unit="file")
    cross = build_crossfile(corpus, tmp_path / "cross", holdout=0.4, per_repo=5, unit="file")
    held = {tuple(x.split("\t")) for x in (tmp_path / "fim" / "heldout_files.txt").read_text().splitlines()}
    assert (tmp_path / "fim" / "heldout_repos.txt").read_text() == "" and fim["files"] == len(held) > 0
    assert {
        tuple(x.split("\t")) for x in (tmp_path / "cross" / "heldout_files.txt").read_text().splitlines()
    } == held
    tasks = [
        json.loads(x) for f in (tmp_path / "fim").glob("*_test.jsonl") for x in f.read_text().splitlines()
    ]
    assert tasks and all((t["repo"], t["path"]) in held for t in tasks)
    assert cross["repos"] >= 1  # targets among held-out files, retrieval over the rest of the repository
    cfg = DataConfig(seq_len=256, exclude_files=str(tmp_path / "fim" / "heldout_files.txt"))
    stream = TrainingStream(corpus, load_tokenizer(bpe_dir), cfg, epochs=1)
    trained = {(repo, d.path) for u, repo in enumerate(stream.sources["code"].repos)
               for make in stream.plan("code", u, 0) for d in make() if d.path}  # fmt: skip
    assert trained and not trained & held


def test_adapt_scores_the_base_and_the_adapted_model_on_the_same_held_out_code(tmp_path, tiny_checkpoint):
    src = tmp_path / "src"
    for pkg in ("json", "email/mime", "wsgiref"):
        repo = shutil.copytree(
            STDLIB / pkg, src / pkg.replace("/", "-"), ignore=shutil.ignore_patterns("__pycache__")
        )
        (repo / "LICENSE").write_text(MIT)
    out = tmp_path / "out"
    args = ["adapt", tiny_checkpoint, src, "--out", out, "--set", "train.max_steps=2", "--set", "train.ckpt_every=1",
            "--set", "data.seq_len=128", "--set", "run.fim_per_type=2", "--set", "run.loss_files=5",
            "--set", "run.crossfile_per_repo=2", "--set", "run.loss_limit=20", "--set", "run.holdout=0.3", "--set", "train.global_batch=2",
            "--set", "train.micro_batch=1", "--set", "train.data_shards=0"]  # fmt: skip
    code, text = cli(*args)
    assert code == 0, text
    summary = json.loads((out / "adapt.json").read_text())
    assert summary["format"] == "codemill" and summary["heldout"]["unit"] == "file"
    for side in ("base", "adapted"):
        assert summary[side]["fim_bits_per_byte"] > 0 and summary[side]["files_bits_per_byte"] > 0
    assert summary["base"]["fim_bits_per_byte"] != summary["adapted"]["fim_bits_per_byte"]
    change = summary["change"]["psm"]  # paired over the same held-out middles
    assert change["items"] > 0 and change["ci95"][0] <= change["bits_per_byte"] <= change["ci95"][1]
    diff = summary["adapted"]["fim_bits_per_byte"] - summary["base"]["fim_bits_per_byte"]
    assert abs(change["bits_per_byte"] - diff) < 1e-6
    assert "What adaptation bought" in (out / "report.md").read_text()
    assert (out / "adapted.gguf").stat().st_size > 0
    final = out / "train" / "final"
    assert (final / "tokenizer.json").read_bytes() == (Path(tiny_checkpoint) / "tokenizer.json").read_bytes()
    code, text = cli(*args)  # a rerun: every stage up to date
    assert code == 0 and "up to date" in text and "train" in text, text


def test_adapt_says_what_is_wrong(tmp_path, tiny_checkpoint):
    code, out = cli("adapt", tmp_path, tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "not a checkpoint directory" in out, out
    prose = tmp_path / "prose"
    prose.mkdir()
    (prose / "README.md").write_text("Only words here.\n")
    code, out = cli("adapt", tiny_checkpoint, prose, "--out", tmp_path / "o2")
    assert code == 2 and "no file survived curation" in out, out
    code, out = cli("adapt", tiny_checkpoint, prose, "--out", tmp_path / "o3", "--format", "qwen2.5-coder")
    assert code == 2 and "lacks <|fim_pad|>, <|fim_prefix|>" in out and "another --format" in out, out
    small = shutil.copytree(tiny_checkpoint, tmp_path / "small")
    cfg = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**cfg, "vocab_size": 1000}))
    code, out = cli("adapt", small, prose, "--out", tmp_path / "o4")
    assert code == 2 and "the tokenizer is not the model's" in out, out
