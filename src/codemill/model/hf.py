"""Hugging Face interop: export in the `LlamaForCausalLM` layout, import Llama-family checkpoints.

Our module names are HF's, so weights move as they are; only `config.json` is translated. Import
reads `model.safetensors`, `pytorch_model.bin`, or either sharded with its `.index.json`, which
covers aiXcoder-7B's release (one `.bin` plus index) and Llama, Mistral, Qwen2 and CodeLlama.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from codemill.errors import UserError
from codemill.model.llama import Llama, ModelConfig

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "starcoder2-llama")
MAX_SHARD_BYTES = 5 * 1024**3


def to_hf_config(cfg: ModelConfig, **extra) -> dict:
    if cfg.qkv_bias:
        raise UserError(
            "a model with q/k/v bias exports as Qwen2, which codemill does not write; train without it"
        )
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # transformers >= 5
        "attention_bias": False,
        "attention_dropout": cfg.attention_dropout,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.initializer_range,
        "torch_dtype": "bfloat16",
        **extra,
    }


def from_hf_config(d: dict) -> ModelConfig:
    kind = d.get("model_type", "llama")
    if kind not in LLAMA_FAMILY:
        raise UserError(
            f"model_type {kind!r} is not a Llama-family decoder; codemill imports {', '.join(LLAMA_FAMILY)}"
        )
    if d.get("rope_scaling") or (d.get("rope_parameters") or {}).get("rope_type", "default") != "default":
        raise UserError("RoPE scaling (rope_scaling / rope_parameters.rope_type) is not supported")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise UserError(
            "Llama attention_bias / mlp_bias checkpoints are not supported (Qwen2-style q/k/v bias is)"
        )
    theta = (d.get("rope_parameters") or {}).get("rope_theta", d.get("rope_theta", 10000.0))
    return ModelConfig(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"],
        num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
        head_dim=d.get("head_dim"),
        rope_theta=float(theta),
        max_seq_len=d.get("max_position_embeddings", 4096),
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        attention_dropout=d.get("attention_dropout", 0.0),
        qkv_bias=kind == "qwen2",
        tie_embeddings=d.get("tie_word_embeddings", False),
        initializer_range=d.get("initializer_range", 0.02),
    )


def export_hf(
    model: Llama, out: str | Path, dtype: torch.dtype = torch.bfloat16, extra: dict | None = None
) -> None:
    """config.json + model.safetensors (sharded past 5 GB with an index), loadable by transformers."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    cfg = to_hf_config(model.cfg, torch_dtype=str(dtype).removeprefix("torch."), **(extra or {}))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], out / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _weight_files(path: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).exists():
            names = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            return [path / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).exists():
            return [path / single]
    raise UserError(f"{path} has no model.safetensors or pytorch_model.bin (sharded or not)")


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(Path(path)):
        if f.suffix == ".safetensors":
            state.update(load_file(f))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    return state


def hf_config(path: str | Path, **overrides) -> ModelConfig:
    """The model config of a HF checkpoint directory, with overrides such as dropout."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    cfg = from_hf_config(json.loads((path / "config.json").read_text()))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def import_hf(path: str | Path, dtype: torch.dtype = torch.float32, **overrides) -> Llama:
    """A Llama-family HF checkpoint directory as our model (config overrides such as dropout allowed)."""
    path = Path(path)
    cfg = hf_config(path, **overrides)
    with torch.device("meta"):
        model = Llama(cfg)
    state = load_state(path)
    if cfg.tie_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise UserError(
            f"checkpoint does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(dtype)
