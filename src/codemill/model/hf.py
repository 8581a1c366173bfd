"""Hugging Face interop: export in the `LlamaForCausalLM` layout (`Qwen2ForCausalLM` with q/k/v
bias), import Llama-family checkpoints, linear and llama3 RoPE scaling both ways.

Our module names are HF's, so weights move as they are; only `config.json` is translated. Import
reads `model.safetensors`, `pytorch_model.bin`, or either sharded with its `.index.json`, which
covers aiXcoder-7B's release (one `.bin` plus index) and Llama, Mistral, Qwen2 and CodeLlama.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from codemill.errors import UserError
from codemill.formats import codemill_info
from codemill.model.llama import ROPE_SCALINGS, Llama, ModelConfig

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "starcoder2-llama")
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
MAX_SHARD_BYTES = 5 * 1024**3


def to_hf_config(cfg: ModelConfig, **extra) -> dict:
    """transformers' config.json: `LlamaForCausalLM`, or `Qwen2ForCausalLM` for q/k/v bias (Llama's
    config has no bias on q/k/v alone), with RoPE scaling as read in."""
    rope = {**(cfg.rope_scaling or {"rope_type": "default"}), "rope_theta": cfg.rope_theta}
    arch = (
        {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "use_sliding_window": False,
         "sliding_window": None, "max_window_layers": cfg.num_layers}
        if cfg.qkv_bias
        else {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
              "mlp_bias": False}
    )  # fmt: skip
    return {
        **arch,
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
        "rope_scaling": cfg.rope_scaling,  # transformers < 5
        "rope_parameters": rope,  # transformers >= 5
        "attention_dropout": cfg.attention_dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.initializer_range,
        "torch_dtype": "bfloat16",
        **extra,
    }


def _rope_scaling(d: dict) -> dict | None:
    """The RoPE scaling of a config.json, transformers >= 5's `rope_parameters` or older
    `rope_scaling` ("type" or "rope_type"), as ModelConfig keeps it; None when unscaled."""
    p = d.get("rope_parameters") or d.get("rope_scaling") or {}
    kind = p.get("rope_type", p.get("type", "default"))
    if kind == "default":
        return None
    if kind not in ROPE_SCALINGS:
        raise UserError(
            f"RoPE scaling {kind!r} is not supported; codemill imports {', '.join(ROPE_SCALINGS)}"
        )
    if kind == "linear":
        return {"rope_type": kind, "factor": float(p["factor"])}
    return {  # transformers falls back to max_position_embeddings for the original window, as here
        "rope_type": kind,
        **{k: float(p[k]) for k in ("factor", "low_freq_factor", "high_freq_factor")},
        "original_max_position_embeddings": int(
            p.get("original_max_position_embeddings") or d.get("max_position_embeddings", 4096)
        ),
    }


def from_hf_config(d: dict) -> ModelConfig:
    kind = d.get("model_type", "llama")
    if kind not in LLAMA_FAMILY:
        raise UserError(
            f"model_type {kind!r} is not a Llama-family decoder; codemill imports {', '.join(LLAMA_FAMILY)}"
        )
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise UserError(
            "Llama attention_bias / mlp_bias checkpoints are not supported (Qwen2-style q/k/v bias is)"
        )
    theta = (d.get("rope_parameters") or {}).get("rope_theta", d.get("rope_theta", 10000.0))
    positions = d.get("max_position_embeddings", 4096)
    window = d.get("sliding_window") if d.get("use_sliding_window", True) else None
    return ModelConfig(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"],
        num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
        head_dim=d.get("head_dim"),
        rope_theta=float(theta),
        # Mistral v0.1 attends within a sliding window, codemill to every position: equal inside it
        max_seq_len=min(positions, window or positions),
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        attention_dropout=d.get("attention_dropout", 0.0),
        qkv_bias=kind == "qwen2",
        tie_embeddings=d.get("tie_word_embeddings", False),
        initializer_range=d.get("initializer_range", 0.02),
        rope_scaling=_rope_scaling(d),
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


DAMAGED = (
    "the file is damaged or was cut short (an interrupted copy, download or export?): copy or export it again"
)


def _json(f: Path, what: str):
    """A checkpoint's JSON file, or a UserError naming it."""
    try:
        return json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{f}: {what} is not valid JSON ({e}); {DAMAGED}") from None


def _weight_files(path: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).exists():
            weight_map = _json(path / index, "the index of the weight shards")
            if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
                raise UserError(f"{path / index} has no `weight_map` of tensor names to files; {DAMAGED}")
            return [path / n for n in sorted(set(map(str, weight_map["weight_map"].values())))]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).exists():
            return [path / single]
    raise UserError(f"{path} has no model.safetensors or pytorch_model.bin (sharded or not)")


def _safetensors_problem(f: Path) -> str | None:
    """What is wrong with a .safetensors file, from its header alone: a header that does not parse, or
    tensors whose bytes lie past the end of the file."""
    size = f.stat().st_size
    with f.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes is too short for a safetensors file"
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100_000_000):  # safetensors' own limit: 100 MB
            return f"it announces a header of {n:,} bytes in a file of {size:,}"
        try:
            header = json.loads(fh.read(n))
            ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            return f"its header is not a safetensors header ({type(e).__name__}: {e})"
    data = size - 8 - n
    if max(ends, default=0) > data:
        return f"its tensors need {max(ends):,} bytes of data, the file holds {data:,}"
    return None


def _bin_problem(f: Path) -> str | None:
    """A torch .bin (a zip archive) cut short loses its directory, at the end of the file."""
    import zipfile

    with f.open("rb") as fh:
        if fh.read(2) != b"PK":
            return None  # torch's legacy format: torch.load says what is wrong
    try:
        with zipfile.ZipFile(f):
            return None
    except zipfile.BadZipFile as e:
        return f"its zip directory is unreadable ({e})"


def check_weights(path: str | Path) -> None:
    """Every weight file of a checkpoint present and whole, from headers only (cheap): a UserError
    naming the first damaged file, before anything is loaded."""
    for f in _weight_files(Path(path)):
        if not f.exists():
            raise UserError(f"{f} is missing (the index lists it); copy the whole checkpoint directory")
        problem = _safetensors_problem(f) if f.suffix == ".safetensors" else _bin_problem(f)
        if problem:
            raise UserError(f"{f}: {problem}; {DAMAGED}")


def check_checkpoint(path: str | Path) -> None:
    """A checkpoint directory whole, from its headers (cheap): config.json a JSON object and every
    weight file present and whole. What serve, eval and export check before they load anything (or
    say they serve): a UserError naming the file and what is wrong with it."""
    _config_json(Path(path))
    codemill_info(path)
    check_weights(path)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    check_weights(path)
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(Path(path)):
        try:
            if f.suffix == ".safetensors":
                state.update(load_file(f))
            else:
                state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        except (SafetensorError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
            raise UserError(f"{f} does not load ({type(e).__name__}: {e}); {DAMAGED}") from None
    return state


def _config_json(path: Path) -> dict:
    """config.json as a mapping, with the keys a Llama-family config needs when it is one."""
    f = path / "config.json"
    if not f.exists():
        raise UserError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    d = _json(f, "the model's config")
    if not isinstance(d, dict):
        raise UserError(f"{f} holds no JSON object of model settings; {DAMAGED}")
    if d.get("model_type", "llama") in LLAMA_FAMILY and (missing := [k for k in REQUIRED if k not in d]):
        raise UserError(
            f"{f} lacks {', '.join(missing)}, which a Llama-family config.json has; restore the file "
            "the checkpoint came with"
        )
    return d


def hf_config(path: str | Path, **overrides) -> ModelConfig:
    """The model config of a HF checkpoint directory, with overrides such as dropout."""
    path = Path(path)
    d = _config_json(path)
    cfg = from_hf_config(d)
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
