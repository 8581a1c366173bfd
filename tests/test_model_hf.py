"""The model against transformers: same logits both ways, every checkpoint layout imports."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from codemill.errors import UserError
from codemill.model.hf import export_hf, import_hf
from codemill.model.llama import Llama, ModelConfig, preset
from codemill.model.loss import token_losses

TINY = {"vocab_size": 320, "hidden_size": 64, "intermediate_size": 172, "num_attention_heads": 4}


def ids(n=2, t=33, vocab=320):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(1))


def test_export_loads_in_transformers_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=172,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=256000.0,
    )
    ours = Llama(cfg).eval()
    ours.init_weights()
    export_hf(ours, tmp_path, dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert isinstance(hf, LlamaForCausalLM) and hf.config.num_key_value_heads == 2
    x = ids()
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("layout", ["safetensors", "sharded-safetensors", "bin", "sharded-bin"])
def test_imports_llama_checkpoints_written_by_transformers(tmp_path, layout):
    torch.manual_seed(0)
    hf = LlamaForCausalLM(
        LlamaConfig(**TINY, num_hidden_layers=2, num_key_value_heads=2, rope_theta=256000.0)
    ).eval()
    shard = "30KB" if layout.startswith("sharded") else "5GB"
    hf.save_pretrained(tmp_path, safe_serialization="safetensors" in layout, max_shard_size=shard)
    names = {p.name for p in tmp_path.iterdir()}
    assert any(n.endswith(".index.json") for n in names) == layout.startswith("sharded")
    ours = import_hf(tmp_path).eval()
    x = ids()
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max() <= 1e-5


def test_imports_qwen2_style_qkv_bias(tmp_path):
    torch.manual_seed(0)
    cfg = Qwen2Config(**TINY, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True)
    hf = Qwen2ForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = import_hf(tmp_path).eval()
    assert ours.cfg.qkv_bias and ours.lm_head.weight is ours.model.embed_tokens.weight
    x = ids()
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max() <= 1e-5


def test_import_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(UserError, match="no config"):
        import_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="Llama-family"):
        import_hf(tmp_path)


def test_aixcoder_7b_preset_on_meta_device():
    with torch.device("meta"):
        model = Llama(preset("aixcoder-7b"))
    c = model.cfg
    assert (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads) == (
        32,
        4096,
        14464,
        32,
        8,
    )
    assert (c.head_dim, c.rope_theta, c.vocab_size, c.max_seq_len) == (128, 256000.0, 49152, 32768)
    assert 7.40e9 < model.num_params() < 7.46e9
    assert all(p.is_meta for p in model.parameters())


def test_chunked_loss_equals_full_cross_entropy():
    torch.manual_seed(0)
    h = torch.randn(100, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (100,))
    full = torch.nn.functional.cross_entropy(h @ w.t(), t, reduction="none")
    chunked = token_losses(h, w, t, chunk=7)
    assert torch.allclose(full, chunked, atol=1e-6)
    (gh, gw) = torch.autograd.grad(full.sum(), (h, w))
    (ch, cw) = torch.autograd.grad(chunked.sum(), (h, w))
    assert torch.allclose(gh, ch, atol=1e-5) and torch.allclose(gw, cw, atol=1e-5)


def test_activation_checkpointing_keeps_dropout_gradients_exact():
    cfg = ModelConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        hidden_dropout=0.1,
        attention_dropout=0.05,
    )
    torch.manual_seed(0)
    model = Llama(cfg)
    model.init_weights()
    model.train()
    x = ids(2, 17, 64)
    grads = []
    for ckpt in (False, True):
        model.checkpointing = ckpt
        model.zero_grad()
        torch.manual_seed(123)
        model(x[:, :-1], targets=x[:, 1:]).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.skipif(not __import__("codemill.model.packed").model.packed.available(), reason="no oneDNN")
def test_packed_linears_compute_what_the_model_computes():
    """Fused q/k/v and gate/up products and oneDNN-packed weights (serve's CPU decode): the same logits
    as the plain model to float rounding, for one row, a few and a prompt's worth, biases included; a
    row's numbers at a fixed row count do not depend on the other rows."""
    from codemill.model.packed import PackedLinear, pack_linears

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_seq_len=64, qkv_bias=True)  # fmt: skip
    model = Llama(cfg).eval()
    model.init_weights()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            torch.nn.init.normal_(m.bias)
    x = ids(2, 40, 300)
    with torch.no_grad():
        plain = model(x)
        model.fuse()  # q/k/v and gate/up as one product each, as serve decodes
        assert (model(x) - plain).abs().max() < 1e-5
        assert pack_linears(model, 4, pack_from=64 * 64 * 4 + 1) == 7  # all but o_proj: 1 + 2 x 3
        assert pack_linears(model, 4, pack_from=0) == 2  # o_proj too
        assert sum(isinstance(m, PackedLinear) for m in model.modules()) == 9
        assert (model(x) - plain).abs().max() < 1e-5
        assert (model(x[:1, :1]) - plain[:1, :1]).abs().max() < 1e-5
        rows = torch.randn(4, 64)
        other = torch.cat([rows[:1], torch.randn(3, 64)])
        head = model.lm_head
        assert torch.equal(head(rows)[0], head(other)[0])
