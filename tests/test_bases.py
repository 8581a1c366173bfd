"""The bases people adapt, each a tiny random checkpoint written by transformers itself with a tokenizer
carrying its family's FIM tokens: the same logits after import, after export to Hugging Face, and in
llama.cpp after GGUF export."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import STDLIB
from test_gguf import llama_cpp_run
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from codemill.data.tokenizer import load_tokenizer
from codemill.errors import UserError
from codemill.formats import get_format
from codemill.model.gguf import export_gguf
from codemill.model.hf import export_hf, import_hf

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0)  # fmt: skip
LINEAR = {"rope_type": "linear", "factor": 4.0}  # DeepSeek-Coder-Base's
# Llama 3.1's shape at a tiny window: 16-dim heads have frequencies in all three bands
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip
# name: transformers classes, config, the family's format, the class the HF export loads as
BASES = {
    "codellama": (LlamaConfig, LlamaForCausalLM, {}, "codellama", LlamaForCausalLM),
    "deepseek-coder": (LlamaConfig, LlamaForCausalLM, {"rope_scaling": LINEAR}, "deepseek-coder", LlamaForCausalLM),
    "llama3": (LlamaConfig, LlamaForCausalLM, {"rope_scaling": LLAMA3}, "codemill", LlamaForCausalLM),
    # a sliding window past the prompt: full attention, Llama's
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 256}, "starcoder2", LlamaForCausalLM),
    "qwen2.5-coder": (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}, "qwen2.5-coder",
                      Qwen2ForCausalLM),
    "qwen2-linear": (Qwen2Config, Qwen2ForCausalLM, {"rope_scaling": LINEAR}, "qwen2.5-coder", Qwen2ForCausalLM),
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizers(code_corpus, tmp_path_factory):
    """One small BPE per format, trained once, reserving that format's specials."""
    from codemill.data.tokenizer import chunks, corpus_texts, save_tokenizer, train_bpe

    made = {}

    def get(name: str):
        if name not in made:
            fmt, out = get_format(name), tmp_path_factory.mktemp(f"tok-{name}")
            texts = chunks(corpus_texts(code_corpus, 200_000))
            save_tokenizer(train_bpe(texts, 512, fmt, show_progress=False), out, fmt)
            made[name] = out
        return made[name]

    return get


def _random(model: torch.nn.Module) -> torch.nn.Module:
    """Weights far from init (std 0.3; norms around 1; biases nonzero), so greedy choices are not ties
    and every tensor, q/k/v biases included, shows in the logits."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if name.endswith("norm.weight") else 0.3 * noise)
    return model.eval()


@pytest.mark.parametrize("base", BASES)
def test_base_logits_match_transformers_and_llama_cpp(base, tokenizers, tmp_path):
    config_cls, model_cls, extra, fmt, exported_cls = BASES[base]
    tok_dir = tokenizers(fmt)
    tok = load_tokenizer(tok_dir)
    config = config_cls(vocab_size=tok.vocab_size, **TINY, **copy.deepcopy(extra))  # it adds keys
    hf = _random(model_cls(config))
    hf.save_pretrained(tmp_path / "hf")
    text = (STDLIB / "textwrap.py").read_text()
    ids = tok.encode_batch([text])[0][:160]  # past llama3's 64-token original window
    x = torch.tensor([ids])
    with torch.no_grad():
        want = hf(x).logits

    ours = import_hf(tmp_path / "hf").eval()
    assert ours.cfg.qkv_bias == (model_cls is Qwen2ForCausalLM)
    assert ours.cfg.max_seq_len == extra.get("sliding_window", TINY["max_position_embeddings"])
    with torch.no_grad():
        got = ours(x)
    imported = (got - want).abs().max().item()

    export_hf(ours, tmp_path / "out", dtype=torch.float32)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(back) is exported_cls
    assert {k: v for k, v in back.config.rope_parameters.items() if k != "rope_theta"} == (
        extra.get("rope_scaling") or {"rope_type": "default"}
    )
    with torch.no_grad():
        exported = (back(x).logits - want).abs().max().item()

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "out" / name).write_bytes((tok_dir / name).read_bytes())
    gguf = tmp_path / "m.gguf"
    info = export_gguf(tmp_path / "out", gguf, "f32", fmt=fmt)
    assert info["fim_pre"] == tok.token_id(get_format(fmt).prefix)
    npy = llama_cpp_run("logits", tmp_path, gguf=str(gguf), ids=ids, n_ctx=256, npy=str(tmp_path / "l.npy"))
    theirs = np.load(npy["npy"])
    in_llama_cpp = np.abs(got[0].numpy() - theirs).max()
    print(
        f"{base}: max |logit difference| import {imported:.1e}, HF export {exported:.1e}, llama.cpp {in_llama_cpp:.1e}"
    )
    assert imported <= 1e-5 and exported <= 1e-5
    assert in_llama_cpp < 1e-2 and (got[0].numpy().argmax(-1) == theirs.argmax(-1)).all()


def test_gguf_refuses_llama3_scaling_with_qkv_bias(tokenizers, tmp_path):
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=512, **TINY, rope_scaling=dict(LLAMA3)))
    hf.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((tokenizers("qwen2.5-coder") / name).read_bytes())
    with pytest.raises(UserError, match="llama3"):
        export_gguf(tmp_path, tmp_path / "m.gguf", "f32", fmt="qwen2.5-coder")
    assert not (tmp_path / "m.gguf").exists()


def test_import_refuses_rope_scalings_codemill_does_not_compute(tmp_path):
    hf = LlamaForCausalLM(
        LlamaConfig(vocab_size=512, **TINY, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    )
    hf.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="'dynamic' is not supported"):
        import_hf(tmp_path)
