"""Eval decodes checkpoints with serve's engine; transformers' `generate` stays as the reference.

The checkpoint is written here by transformers itself (a random `LlamaForCausalLM`, with the test
tokenizer), so the engine's import, fused weights, KV-cache slots and stop rules are all checked
against an implementation that shares none of them. Greedy tokens are equal; where the two paths
legitimately differ, they are not compared: sampling (the engine's sampler draws from its own seeded
generator, transformers from the global one) and bf16 on a GPU (other kernels, other roundings).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from codemill.eval.models import Checkpoint, Request, Transformers, load_model, syntax_cut
from codemill.eval.suites import SUITES, humaneval


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory, bpe_dir):
    """A random 2-layer Llama saved by transformers, with a larger init than training's so that its
    greedy picks are not near-ties that rounding could flip."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hf-llama")
    cfg = LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.1)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (bpe_dir / name).exists():
            shutil.copy(bpe_dir / name, out / name)
    (out / "codemill.json").write_text(json.dumps({"format": "codemill"}))
    return out


def prompts() -> list[Request]:
    """HumanEval prompts (NTP) and HumanEval-infilling single-line ones (FIM, PSM and SPM)."""
    ntp = [dataclasses.replace(t.request, max_tokens=32) for t in humaneval()[:6]]
    fim = [
        dataclasses.replace(t.request, max_tokens=16)
        for t in SUITES["humaneval-infilling/single-line"].load()[:4]
    ]
    return ntp + fim + [dataclasses.replace(r, spm=True) for r in fim[:2]]


def test_engine_greedy_tokens_equal_transformers_generate(hf_llama):
    engine_model, hf = Checkpoint(hf_llama, parallel=4), Transformers(hf_llama)
    engine = engine_model.engine
    reqs = prompts()
    # tokens: no stop strings, only the format's stop tokens, every request in the slots at once
    jobs = [(engine_model.prompt_ids(r), dataclasses.replace(engine_model.params(r), stop=())) for r in reqs]
    ours = dict(engine.run(jobs))
    stops = sorted(engine.stop_ids)
    for i, (ids, p) in enumerate(jobs):
        gen = hf.model.generate(torch.tensor([ids]), max_new_tokens=p.max_tokens, do_sample=False,
                                eos_token_id=stops, pad_token_id=stops[0])  # fmt: skip
        theirs = gen[0, len(ids) :].tolist()
        theirs = theirs[: next((k for k, t in enumerate(theirs) if t in engine.stop_ids), len(theirs))]
        assert ours[i].tokens == theirs, i
    assert sum(len(c.tokens) for c in ours.values()) > 100
    # texts, as eval records them: the suites' stop strings end the engine's decoding early and cut
    # transformers' after the fact, at the same place
    got = engine_model.complete(reqs)
    assert got == hf.complete(reqs) and sum(map(len, got)) > 0


def test_engine_applies_serves_syntax_stop_as_it_decodes(hf_llama):
    """--syntax-stop is serve's own rule on the engine: sampled with the same seed, the stopped text
    is the free text cut where the rule cuts it (inside a string every line parses)."""
    m = Checkpoint(hf_llama)
    pre, suf = "def f():\n    s = '''\n", "'''\n    return s\n"
    free = [Request(pre, suf, max_tokens=48, path="a.py", temperature=1.0, seed=k) for k in range(8)]
    cut = [dataclasses.replace(r, syntax_stop=True) for r in free]
    answers, stopped = m.complete(free), m.complete(cut)
    assert stopped == [syntax_cut(r, a) for r, a in zip(cut, answers, strict=True)]
    assert sum(s != a for s, a in zip(stopped, answers, strict=True)) >= 1


def test_architectures_the_engine_cannot_run_fall_back_to_transformers(tmp_path, bpe_dir, capsys):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=2048, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, max_position_embeddings=256)  # fmt: skip
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path)
    shutil.copy(bpe_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    m = load_model(str(tmp_path), "codemill")
    assert isinstance(m, Transformers) and m.inference == "transformers"
    assert "generating with transformers instead" in capsys.readouterr().err
    assert isinstance(m.complete([Request("x = 1\n", max_tokens=4)])[0], str)
