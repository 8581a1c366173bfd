"""GGUF export: a Llama- or Qwen2-layout checkpoint directory as one file that llama.cpp and Ollama run.

Written with `gguf`, llama.cpp's own writer, from the checkpoint's files rather than through
llama.cpp's convert_hf_to_gguf.py, which rejects tokenizers whose pre-tokenizer it cannot recognise
by hashing; ours names it (`tokenizer.ggml.pre`), since codemill knows which split it trained with.
Llama-layout models are written as llama.cpp's `llama` architecture, with Q and K projections
permuted from the Hugging Face layout (rotate-half RoPE) to GGML's interleaved one, as
convert_hf_to_gguf.py does; q/k/v-bias models as its `qwen2` (rotate-half, unpermuted, with the bias
tensors). RoPE scaling goes in as convert_hf_to_gguf.py writes it: linear as `rope.scaling.*`, llama3
as the `rope_freqs` tensor. The tokenizer goes in as llama.cpp's "gpt2" byte-level BPE or as its
"llama" SentencePiece model (aiXcoder-format checkpoints, no dummy prefix: codemill encodes every
text segment without one), with every special-token id of the format, including the FIM sentinels,
the repository name and the file separator, which llama.cpp then treats as end of generation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from codemill.data.tokenizer import LLAMA_CPP_PRETOKENIZERS, pretokenizer_name
from codemill.errors import UserError
from codemill.formats import Format, checkpoint_format, trained_context
from codemill.model.hf import check_checkpoint, hf_config, load_state
from codemill.model.llama import ModelConfig, rope_inv_freq

DTYPES = ("f32", "f16", "bf16", "q8_0")


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError("GGUF export needs the `gguf` package: pip install gguf") from e
    return gguf


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from [first halves, second halves] to interleaved pairs (GGML's RoPE)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(state: dict[str, torch.Tensor], cfg: ModelConfig):
    """(GGUF name, float32 array) in llama.cpp's names. llama.cpp's qwen2 graph ropes rotate-half
    (NEOX) as Hugging Face does, so only the llama architecture's Q and K rows are permuted."""
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    heads = {} if cfg.qkv_bias else {"attn_q": cfg.num_heads, "attn_k": cfg.num_kv_heads}
    get = lambda k: state[k].float().numpy()  # noqa: E731
    yield "token_embd.weight", get("model.embed_tokens.weight")
    if (cfg.rope_scaling or {}).get("rope_type") == "llama3":  # llama.cpp divides each frequency by these
        factors = rope_inv_freq(cfg, scaled=False).double() / rope_inv_freq(cfg).double()
        yield "rope_freqs.weight", factors.float().numpy()
    for i in range(cfg.num_layers):
        for ours, theirs in names.items():
            biased = cfg.qkv_bias and theirs in ("attn_q", "attn_k", "attn_v")
            for suffix in ("weight", "bias") if biased else ("weight",):
                w = get(f"model.layers.{i}.{ours}.{suffix}")
                if theirs in heads:
                    w = _permute(w, heads[theirs])
                yield f"blk.{i}.{theirs}.{suffix}", w
    yield "output_norm.weight", get("model.norm.weight")
    if not cfg.tie_embeddings:  # llama.cpp reuses token_embd when output is absent
        yield "output.weight", get("lm_head.weight")


def _encode(gguf, w: np.ndarray, dtype: str):
    """(data, GGML type): 1-D tensors (norms) stay f32; q8_0 needs rows of whole 32-value blocks."""
    Q = gguf.GGMLQuantizationType
    if w.ndim == 1 or dtype == "f32":
        return w.astype(np.float32), Q.F32
    qtype = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[dtype]
    if qtype == Q.Q8_0 and w.shape[-1] % 32:
        qtype = Q.F16
    return gguf.quants.quantize(w.astype(np.float32), qtype), qtype


def _bpe_vocab(gguf, path: Path, size: int) -> tuple[list[str], list[int], list[str], str]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    pre = pretokenizer_name(tok)
    if pre not in LLAMA_CPP_PRETOKENIZERS:
        raise UserError(
            f"{path / 'tokenizer.json'} splits text with a pre-tokenizer llama.cpp does not implement "
            f"({pre or 'one codemill does not know'}); retrain it with `codemill tokenizer train --pretokenizer "
            f"qwen2` (one of {', '.join(LLAMA_CPP_PRETOKENIZERS)}) and train the model on it"
        )
    spec = json.loads(tok.to_str())
    model = spec["model"]
    T = gguf.TokenType
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [T.UNUSED] * size
    for text, i in model["vocab"].items():
        tokens[i], types[i] = text, T.NORMAL
    for added in spec["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = T.CONTROL if added["special"] else T.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, types, merges, pre


def _sp_vocab(gguf, path: Path, size: int) -> tuple[list[str], list[int], list[float]]:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((path / "tokenizer.model").read_bytes())
    T = gguf.TokenType
    tokens, types, scores = [f"[PAD{i}]" for i in range(size)], [T.UNUSED] * size, [-1000.0] * size
    for i, piece in enumerate(proto.pieces):
        tokens[i], types[i], scores[i] = piece.piece, int(piece.type), piece.score
    return tokens, types, scores


def _special_ids(fmt: Format, tokens: list[str]) -> dict[str, int]:
    """llama.cpp's key for each special token the format uses."""
    index = {t: i for i, t in enumerate(tokens)}
    keys = {
        "bos": fmt.bos,
        "eos": fmt.eos,
        "padding": fmt.pad,
        "fim_pre": fmt.prefix,
        "fim_suf": fmt.suffix,
        "fim_mid": fmt.middle,
        "fim_pad": fmt.pad,
        "fim_rep": fmt.repo_name,
        "fim_sep": fmt.file_sep,
    }
    missing = [t for t in keys.values() if t and t not in index]
    if missing:
        raise UserError(f"the tokenizer has no {missing}; is --format right for this checkpoint?")
    return {k: index[t] for k, t in keys.items() if t}


def export_gguf(checkpoint: str | Path, out: str | Path, dtype: str = "f16", fmt: str | None = None) -> dict:
    """Write `out` from a checkpoint directory (config.json, weights, tokenizer). Returns a summary."""
    gguf = _gguf()
    if dtype not in DTYPES:
        raise UserError(f"unknown GGUF dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    path, out = Path(checkpoint), Path(out)
    if not (path / "config.json").exists():
        raise UserError(f"{path} has no config.json; pass a checkpoint directory (train's final/)")
    check_checkpoint(path)  # before anything is written
    cfg = hf_config(path)
    scaling = (cfg.rope_scaling or {}).get("rope_type")
    if cfg.qkv_bias and scaling == "llama3":
        raise UserError(
            "llama.cpp's qwen2 graph has no per-frequency RoPE factors, which llama3 scaling needs"
        )
    if cfg.qkv_bias and cfg.num_heads * cfg.head_dim != cfg.hidden_size:
        raise UserError("llama.cpp's qwen2 graph needs num_heads * head_dim equal to hidden_size")
    form = checkpoint_format(path, fmt)
    tmp = out.with_name(out.name + ".tmp")  # written whole, then renamed: no truncated .gguf if killed
    arch = "qwen2" if cfg.qkv_bias else "llama"  # llama.cpp's names for the two graphs
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(path.resolve().name)
    w.add_string("codemill.format", form.name)
    hparams = {  # <arch>.<key>: what llama.cpp's graph reads
        # the trained window: llama-server's -c 0 takes it, and positions past it were never trained
        "context_length": (context := trained_context(path, cfg.max_seq_len)), "embedding_length": cfg.hidden_size,
        "block_count": cfg.num_layers,
        "feed_forward_length": cfg.intermediate_size, "head_count": cfg.num_heads,
        "head_count_kv": cfg.num_kv_heads, "key_length": cfg.head_dim, "value_length": cfg.head_dim,
        "rope_dimension_count": cfg.head_dim, "rope_freq_base": cfg.rope_theta,
        "layer_norm_rms_eps": cfg.rms_norm_eps, "vocab_size": cfg.vocab_size,
    }  # fmt: skip
    for key, value in hparams.items():
        getattr(w, f"add_{key}")(value)
    if scaling == "linear":  # llama3's factors go in as the rope_freqs tensor (_tensors)
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling["factor"])
    ftype = gguf.LlamaFileType
    w.add_file_type({"f32": ftype.ALL_F32, "f16": ftype.MOSTLY_F16, "bf16": ftype.MOSTLY_BF16,
                     "q8_0": ftype.MOSTLY_Q8_0}[dtype])  # fmt: skip
    if (path / "tokenizer.json").exists():
        tokens, types, merges, pre = _bpe_vocab(gguf, path, cfg.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_merges(merges)
    elif (path / "tokenizer.model").exists():
        tokens, types, scores = _sp_vocab(gguf, path, cfg.vocab_size)
        pre = "default"
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre(pre)
        w.add_token_scores(scores)
    else:
        raise UserError(f"{path} has no tokenizer.json or tokenizer.model")
    w.add_token_list(tokens)
    w.add_token_types(types)
    specials = _special_ids(form, tokens)
    for key, i in specials.items():
        w.add_uint32(f"tokenizer.ggml.{key}_token_id", i)
    w.add_bool(gguf.Keys.Tokenizer.ADD_BOS, form.bos is not None)
    w.add_bool(gguf.Keys.Tokenizer.ADD_EOS, False)
    w.add_bool(gguf.Keys.Tokenizer.ADD_PREFIX, False)  # segments are encoded without a dummy `▁`
    state = load_state(path)
    for name, tensor in _tensors(state, cfg):
        data, qtype = _encode(gguf, tensor, dtype)
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    tmp.replace(out)
    return {"path": str(out), "bytes": out.stat().st_size, "tokenizer": pre, "format": form.name,
            "context": context, **specials}  # fmt: skip
