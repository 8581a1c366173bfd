"""LoRA (Hu et al., 2021) through peft on codemill's own `Llama`: low-rank adapters beside the named
linear layers of every block, everything else frozen. Adapting a 7B base this way needs the frozen
weights once (bf16) plus a few million trained parameters, so it fits one GPU where full fine-tuning
needs a cluster. For export the adapters are merged into the weights they adapt, so what leaves
training is a plain `Llama` (HF layout, GGUF, serve) with no peft inside."""

from __future__ import annotations

import torch
from torch import nn

from codemill.errors import UserError
from codemill.model.llama import Llama, ModelConfig


def check(rank: int, cfg: ModelConfig) -> None:
    """A rank the model can hold (train/config.py checks the targets, which need no model)."""
    if not 1 <= rank <= cfg.hidden_size:
        raise UserError(
            f"train.lora_rank {rank} must be at least 1 and at most the hidden size {cfg.hidden_size} "
            "(set lora_rank=0 to train every weight instead)"
        )


def add_adapters(
    model: Llama, rank: int, alpha: float, dropout: float, targets: tuple[str, ...], seed: int
) -> Llama:
    """Adapters (A random, B zero: the model starts as the base) on `targets`, in place; only they
    train. The same seed gives the same A on every rank and on resume."""
    check(rank, model.cfg)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _inject(model, rank, alpha, dropout, targets)


def _inject(model: Llama, rank: int, alpha: float, dropout: float, targets, meta: bool = False) -> Llama:
    from peft import LoraConfig, inject_adapter_in_model  # seconds to import: only when adapting

    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none"
    )
    inject_adapter_in_model(config, model, low_cpu_mem_usage=meta)
    del model.peft_config  # peft's bookkeeping; codemill's settings live in run.json
    return model


def freeze_to(model: nn.Module, dtype: torch.dtype) -> None:
    """Frozen parameters in `dtype` (bf16: half the memory of the base; compute is bf16 already),
    trained ones left in fp32 for the optimizer."""
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(dtype)


def merge(model: Llama) -> Llama:
    """Each adapter merged into the weight it adapts (W + alpha / r * B A, peft's own merge), and
    the wrapper replaced by that plain layer, in place: the state dict has the base's names again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, module.get_base_layer())
    return model


def plain(cfg: ModelConfig, state: dict[str, torch.Tensor], lora: dict | None) -> Llama:
    """A plain `Llama` from a training state dict; with `lora` (rank, alpha, dropout, targets) one
    that holds adapters, merged."""
    with torch.device("meta"):
        model = Llama(cfg)
    if lora:
        _inject(model, **lora, meta=True)
    model.load_state_dict(state, assign=True)
    return merge(model) if lora else model
