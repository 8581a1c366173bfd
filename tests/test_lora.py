"""LoRA on a checkpoint: settings checked, only adapters train (one process and FSDP2), checkpoints
hold the adapters and resume exactly, and the export merges them into plain weights."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
from conftest import make_checkpoint
from safetensors.torch import load_file
from test_train import losses, run, train_cmd

LORA = ["--set", "lora_rank=4", "--set", "lora_alpha=8", "--set", "lr=3e-3"]


@pytest.fixture(scope="module")
def base(tmp_path_factory, bpe_dir):
    """A random checkpoint shaped as test_train's MODEL (hidden 32), with the test tokenizer."""
    return make_checkpoint(tmp_path_factory.mktemp("base"), bpe_dir, hidden_size=32, intermediate_size=64)


def test_lora_settings_are_checked(code_corpus, bpe_dir, base, tmp_path):
    from codemill.errors import UserError
    from codemill.model.hf import import_hf
    from codemill.model.lora import add_adapters
    from codemill.train.config import TrainConfig

    with pytest.raises(UserError, match=r"lora_rank 33 must be at least 1 and at most the hidden size 32"):
        add_adapters(import_hf(base), rank=33, alpha=8, dropout=0.0, targets=("q_proj",), seed=0)
    with pytest.raises(UserError, match=r"lora_targets \['qproj'\].*q_proj, k_proj.*\(not qproj\)"):
        TrainConfig.from_dict({"lora_rank": 4, "lora_targets": ["qproj"]})
    with pytest.raises(UserError, match="lora_rank is -1; it must be at least 0"):
        TrainConfig.from_dict({"lora_rank": -1})
    out = tmp_path / "x"
    r = subprocess.run(
        train_cmd(code_corpus, bpe_dir, out, "--set", "lora_rank=4"), capture_output=True, text=True
    )
    assert r.returncode == 2 and "--init-from" in r.stdout, r.stdout + r.stderr[-2000:]
    cmd = train_cmd(code_corpus, bpe_dir, out, "--init-from", str(base), "--set", "lora_rank=64")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "lora_rank 64" in r.stdout and "hidden size 32" in r.stdout, r.stdout


def test_merged_model_gives_the_adapters_logits(base):
    """peft's merge (W + alpha / r * B A) in the exported weights: the plain model's logits are the
    adapted model's, and they are not the base's (B is nonzero here, unlike at initialisation)."""
    from codemill.model.hf import import_hf
    from codemill.model.lora import add_adapters, plain

    lora = {"rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": ("q_proj", "v_proj", "o_proj", "down_proj")}
    model = add_adapters(import_hf(base), **lora, seed=0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 16))
    with torch.no_grad():
        adapted, before = model(ids), import_hf(base)(ids)
    merged = plain(model.cfg, {k: v.clone() for k, v in model.state_dict().items()}, lora).eval()
    assert set(merged.state_dict()) == set(import_hf(base).state_dict())  # the base's names, no peft
    with torch.no_grad():
        after = merged(ids)
    assert torch.allclose(after, adapted, atol=1e-5, rtol=0)
    assert not torch.allclose(after, before, atol=1e-3)


def test_lora_trains_only_adapters_and_resumes_exactly(code_corpus, bpe_dir, base, tmp_path):
    import torch.distributed.checkpoint as dcp

    extra = [*LORA, "--init-from", str(base), "--set", "max_steps=4", "--set", "ckpt_every=2"]
    extra += ["--set", "lora_targets=[q_proj, v_proj, down_proj]"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(train_cmd(code_corpus, bpe_dir, straight, *extra))
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "state" / "step-00000004")
    shutil.rmtree(resumed / "final")
    run(train_cmd(code_corpus, bpe_dir, resumed, *extra))  # resumes from step 2
    assert losses(resumed) == losses(straight) and [s for s, _ in losses(straight)] == [1, 2, 3, 4]
    saved = dcp.FileSystemReader(straight / "state" / "step-00000004").read_metadata().state_dict_metadata
    weights = {k for k in saved if k.startswith("model.")}
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)  # the adapters, not the base
    old = load_file(base / "model.safetensors")
    new, again = (load_file(r / "final" / "model.safetensors") for r in (straight, resumed))
    assert new.keys() == old.keys() and all(torch.equal(new[k], again[k]) for k in new)
    adapted = {k for k in new if not torch.equal(new[k], old[k])}
    targets = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    assert adapted == {
        f"model.layers.{i}.{t}.weight" for i in range(2) for t in targets
    }  # merged, rest frozen
    assert json.loads((straight / "final" / "codemill.json").read_text())["parameters"] == sum(
        v.numel() for v in old.values()
    )


def test_lora_under_fsdp2_takes_the_steps_of_one_process(code_corpus, bpe_dir, base, tmp_path):
    """Adapters trained, base frozen, inside each FSDP2 unit (gloo on CPU): the losses and merged
    weights of one process (no adapter dropout: its masks are drawn per rank); in bf16 the frozen
    base is kept in bf16 beside fp32 adapters."""
    extra = [*LORA, "--init-from", str(base), "--set", "max_steps=3", "--set", "data_shards=2"]
    extra += ["--set", "lora_dropout=0"]
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "one", *extra))
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "two", *extra, torchrun=2))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
    assert all(abs(x - y) < 1e-5 for (_, x), (_, y) in zip(a, b, strict=True))
    wa, wb = (load_file(tmp_path / r / "final" / "model.safetensors") for r in ("one", "two"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "bf16", *extra, "--set", "dtype=bf16", torchrun=2))
    c = losses(tmp_path / "bf16")
    assert all(abs(x - y) < 0.02 * x for (_, x), (_, y) in zip(a, c, strict=True))


def test_plan_counts_lora_memory_by_hand():
    """A tiny config counted by hand: adapters r x (in + out) per target, their fp32 weights,
    gradients and two moments (16 bytes each); the frozen base once in bf16; nothing gathered on one
    GPU; sharded over several. The checkpointed activations are still a block's bf16 input."""
    from codemill.model.llama import ModelConfig
    from codemill.train.plan import meta_model, plan

    cfg = ModelConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2
    )
    lora = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ("q_proj", "v_proj", "down_proj")}
    # per layer: q 4 x (32 + 32), v 4 x (32 + 16), down 4 x (64 + 32)
    adapters = 2 * (4 * 64 + 4 * 48 + 4 * 96)
    # embeddings and head 256 x 32 each, final norm 32; per layer two norms, q and o 32 x 32, k and v
    # 16 x 32, gate, up and down 64 x 32
    base = 2 * 256 * 32 + 32 + 2 * (2 * 32 + 2 * 1024 + 2 * 512 + 3 * 2048)
    model = meta_model(cfg, lora=lora)
    kw = dict(seq_len=64, micro_batch=2, global_batch=4, tokens=1e6, gpu_memory_gb=80, peak_tflops=1, mfu=0.5)
    one = plan(model, gpus=1, **kw)
    assert (one["trained"], one["parameters"]) == (adapters, base + adapters)
    assert one["states"] == 16 * adapters and one["frozen"] == 2 * base and one["gathered"] == 0
    ckpt = one["memory"]["checkpointing"]
    assert ckpt["per_module"]["layers.1"] == 2 * 64 * 32 * 2
    four = plan(model, gpus=4, **kw)
    assert four["states"] == 16 * adapters / 4 and four["frozen"] == 2 * base / 4
    full = plan(meta_model(cfg), gpus=1, **kw)
    assert full["trained"] == full["parameters"] == base and full["frozen"] == 0
    assert full["states"] == 16 * base
