"""The completion engine against transformers' generate(), and its cache reuse across requests."""

from __future__ import annotations

import shutil

import pytest
import torch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, bpe_dir):
    from codemill.model.hf import export_hf
    from codemill.model.llama import Llama, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_seq_len=512,
    )
    model = Llama(cfg)
    model.init_weights()
    out = tmp_path_factory.mktemp("ckpt")
    export_hf(model, out, dtype=torch.float32)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(bpe_dir / name, out / name)
    (out / "codemill.json").write_text('{"format": "codemill"}')
    return out


PREFIX = "import json\n\n\ndef load(path):\n    with open(path) as f:\n        "
SUFFIX = "\n    return data\n"


def test_greedy_output_equals_transformers_generate(checkpoint):
    from transformers import AutoModelForCausalLM

    from codemill.serve.engine import Engine

    engine = Engine(checkpoint)
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    for suffix in (None, SUFFIX):
        ids = engine.prompt(PREFIX, suffix, path="io.py", max_tokens=40)
        ours = engine.complete(ids, max_tokens=40)
        stops = sorted(engine.stop_ids)
        gen = hf.generate(
            torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=stops, pad_token_id=stops[0]
        )
        theirs = [t for t in gen[0, len(ids) :].tolist() if t not in engine.stop_ids]
        assert ours.tokens == theirs and len(ours.tokens) > 0


def test_cache_is_reused_and_gives_the_same_answers(checkpoint):
    from codemill.serve.engine import Engine

    warm, cold = Engine(checkpoint), Engine(checkpoint)
    typed = PREFIX
    first = warm.prompt(typed, SUFFIX, path="io.py", max_tokens=16)
    warm.complete(first, max_tokens=16)
    for ch in "data = json.load(f)":  # typing at the cursor: the SPM prompt only grows at its end
        typed += ch
        ids = warm.prompt(typed, SUFFIX, path="io.py", max_tokens=16)
        a = warm.complete(ids, max_tokens=16)
        cold.cached, cold.cache.length = [], 0
        b = cold.complete(ids, max_tokens=16)
        assert a.tokens == b.tokens  # reuse never changes the answer
        assert a.tokens_cached >= len(first) - 8 and a.tokens_evaluated < 12
        assert b.tokens_cached == 0


def test_stream_pieces_join_into_the_text_and_stops_apply(checkpoint):
    from codemill.serve.engine import Engine

    engine = Engine(checkpoint)
    ids = engine.prompt(PREFIX, SUFFIX, path="io.py", max_tokens=30)
    steps = list(engine.generate(ids, max_tokens=30))
    pieces, final = [p for p, _ in steps], steps[-1][1]
    assert "".join(pieces) == final.text
    assert not any(p.endswith("\ufffd") for p in pieces[:-1])  # never half a UTF-8 character
    assert final.stop_type in ("eos", "limit")
    if len(final.text) > 2:
        cut = engine.complete(ids, max_tokens=30, stop=(final.text[1:3],))
        assert cut.stop_type == "word" and cut.text == final.text[: final.text.find(final.text[1:3])]
    sampled = [
        engine.complete(ids, max_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=s).tokens
        for s in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1]
    with pytest.raises(ValueError, match="no room"):
        engine.complete(list(range(1, 600)), max_tokens=10)
