"""The Llama-style decoder of the paper (§III-A): RMSNorm, rotate-half RoPE, grouped-query attention
through `scaled_dot_product_attention`, SwiGLU, untied head, hidden and attention dropout.

Module names follow Hugging Face's `LlamaForCausalLM`, so a state dict moves between the two without
renaming (model/hf.py), and RoPE and RMSNorm are computed as transformers computes them (fp32), so the
logits match.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from codemill.errors import UserError
from codemill.model.loss import token_losses

ROPE_SCALINGS = ("linear", "llama3")  # transformers' rope_type names


@dataclass
class ModelConfig:
    vocab_size: int = 49152
    hidden_size: int = 4096
    intermediate_size: int = 14464  # given, not derived (aiXcoder-7B)
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int | None = None  # hidden_size // num_heads unless given
    rope_theta: float = 256000.0
    max_seq_len: int = 32768
    rms_norm_eps: float = 1e-6  # aiXcoder's HF config.json; its Megatron code used 1e-5
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    qkv_bias: bool = False  # Qwen2-style checkpoints
    tie_embeddings: bool = False
    initializer_range: float = 0.02
    # transformers' rope_parameters less rope_theta: {"rope_type": "linear", "factor": 4.0}
    # (DeepSeek-Coder) or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"} (Llama 3.x); None: unscaled
    rope_scaling: dict | None = None

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        kind = (self.rope_scaling or {}).get("rope_type")
        if self.rope_scaling is not None and kind not in ROPE_SCALINGS:
            raise UserError(
                f"RoPE scaling {kind!r} is not supported; codemill runs {', '.join(ROPE_SCALINGS)} "
                "(and unscaled RoPE)"
            )
        if self.num_heads % self.num_kv_heads:
            raise UserError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, ModelConfig] = {
    # trains on a 2-core CPU in minutes
    "demo": ModelConfig(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=688,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=10000.0,
        max_seq_len=1024,
    ),
    # GPT-2-small sized: about 125M parameters with a 32,768 vocabulary
    "small": ModelConfig(
        vocab_size=32768,
        hidden_size=768,
        intermediate_size=2048,
        num_layers=12,
        num_heads=12,
        num_kv_heads=4,
        rope_theta=10000.0,
        max_seq_len=4096,
    ),
    # TinyLlama's shape
    "1b": ModelConfig(
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=5632,
        num_layers=22,
        num_heads=32,
        num_kv_heads=4,
        rope_theta=10000.0,
        max_seq_len=4096,
    ),
    # the paper's Table I, exactly (hidden 0.1 / attention 0.05 dropout as trained)
    "aixcoder-7b": ModelConfig(hidden_dropout=0.1, attention_dropout=0.05),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # the same numbers, fewer calls
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def rope_inv_freq(cfg: ModelConfig, device=None, scaled: bool = True) -> torch.Tensor:
    """RoPE's inverse frequencies [head_dim / 2] in fp32, computed as transformers'
    `ROPE_INIT_FUNCTIONS` compute them (default, 'linear', 'llama3'), so the logits match."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    p = cfg.rope_scaling if scaled else None
    if p is None:
        return inv_freq
    if p["rope_type"] == "linear":
        return inv_freq / p["factor"]
    # llama3: long wavelengths divided by the factor, short ones kept, the band between interpolated
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled_freq = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled_freq / factor + smooth * scaled_freq
    medium = ~(wavelen < old / high) * ~(wavelen > old / low)
    return torch.where(medium, smoothed, scaled_freq)


def rope_tables(cfg: ModelConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, head_dim] in fp32, laid out for rotate-half (HF's convention)."""
    inv_freq = rope_inv_freq(cfg, positions.device)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    if x.dtype == torch.float32:
        return x * cos + rotated * sin
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Cache(Protocol):
    """What a forward over cached keys and values needs from the cache it is given: the RoPE tables of
    the new tokens, their attention (writing their keys and values first), and moving past them. The
    model keeps no serving state; the serving engine's caches (serve/kvcache.py) say where each row's
    tokens go and what they attend to."""

    def rope(self, t: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...

    def advance(self, t: int) -> None: ...


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)
        self.qkv_proj: nn.Linear | None = None

    def fuse(self) -> None:
        """One product for queries, keys and values instead of three (inference: a decode step is
        mostly calls on small matrices); the three layers a state dict names are dropped."""
        self.qkv_proj = _fused(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: Cache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Without a cache: causal attention over `x` (training, scoring); with one, the cache's."""
        b, t, _ = x.shape
        c = self.cfg
        h, kv = c.num_heads, c.num_kv_heads
        if self.qkv_proj is not None:  # one rotation for queries and keys together
            qkv = self.qkv_proj(x).view(b, t, h + 2 * kv, c.head_dim).transpose(1, 2)
            qk, v = apply_rope(qkv[:, : h + kv], cos, sin), qkv[:, h + kv :]
            q, k = qk[:, :h], qk[:, h:]
        else:
            q = self.q_proj(x).view(b, t, h, c.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, t, kv, c.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, t, kv, c.head_dim).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = self._attend(q, k, v) if cache is None else cache.attend(layer, q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, h * c.head_dim))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention over the new tokens."""
        if q.is_meta:  # shapes only (train/plan.py): keep what a fused kernel keeps, not the T x T scores
            return FusedAttentionShapes.apply(q, k, v)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            dropout_p=self.cfg.attention_dropout if self.training else 0.0,
            enable_gqa=q.shape[1] != k.shape[1],
        )


class FusedAttentionShapes(torch.autograd.Function):
    """Attention on the meta device: the output's shape, and for backward what flash attention keeps
    (queries, keys and values at their own heads, the output and its fp32 log-sum-exp). On meta, SDPA
    falls back to the math path, which keeps the scores: quadratic in the sequence length."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("meta tensors are for planning; nothing runs backward on them")


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_proj: nn.Linear | None = None

    def fuse(self) -> None:
        """One product for gate and up (inference, as `Attention.fuse`)."""
        self.gate_up_proj = _fused(self.gate_proj, self.up_proj)
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _fused(*linears: nn.Linear) -> nn.Linear:
    """One linear layer whose outputs are those of `linears`, in order."""
    first = linears[0]
    fused = nn.Linear(first.in_features, sum(m.out_features for m in linears), bias=first.bias is not None,
                      device=first.weight.device, dtype=first.weight.dtype)  # fmt: skip
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in linears]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([m.bias for m in linears]))
    return fused.requires_grad_(False)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: Cache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, cache, layer))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.checkpointing = False  # activation checkpointing per block (RNG preserved for dropout)

    def fuse(self) -> Llama:
        """Fuse each block's q/k/v and gate/up products for inference (fewer calls per decoded
        token; the state dict no longer has Hugging Face's names)."""
        for block in self.model.layers:
            block.self_attn.fuse()
            block.mlp.fuse()
        return self

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=self.cfg.initializer_range)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=self.cfg.initializer_range)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def hidden(self, ids: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """Final normed hidden states [B, T, hidden]: the loss applies the head in chunks. With a
        cache, `ids` continue what it holds, as the cache places them (model.Cache)."""
        if cache is None:
            cos, sin = rope_tables(self.cfg, torch.arange(ids.shape[1], device=ids.device))
        else:
            cos, sin = cache.rope(ids.shape[1])
        x = self.model.embed_tokens(ids)
        for i, block in enumerate(self.model.layers):
            if self.checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, use_reentrant=False, preserve_rng_state=True)
            else:
                x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.advance(ids.shape[1])
        return self.model.norm(x)

    @torch.no_grad()
    def next_logits(self, ids: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Logits [B, vocab] (fp32) after the last of `ids` [B, T] in each row, fed on top of the cache."""
        return self.lm_head(self.hidden(ids, cache)[:, -1]).float()

    def forward(
        self, ids: torch.Tensor, targets: torch.Tensor | None = None, loss_chunk: int = 4096
    ) -> torch.Tensor:
        """Logits [B, T, vocab] in fp32; with targets, per-token losses [B * T] computed in chunks
        of `loss_chunk` tokens so the logits never exist whole (model/loss.py)."""
        h = self.hidden(ids)
        if targets is None:
            return self.lm_head(h).float()
        return token_losses(h.flatten(0, 1), self.lm_head.weight, targets.flatten(), loss_chunk)

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.model.embed_tokens.weight.numel()
