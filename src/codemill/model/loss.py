"""Cross-entropy fused with the output head, in chunks.

`LinearCrossEntropy` turns the logits buffer into exp(logits - max) in place in forward and into the
gradient in place in backward (softmax minus one-hot, times the upstream gradient): fewer passes over
the [tokens x vocab] matrix than log_softmax + nll, and no second copy of it. Past `chunk`
tokens the head is applied chunk by chunk and recomputed in backward, so at 32k context with a 49k
vocabulary (6.4 GB of fp32 logits per sequence) only one chunk's logits exist at a time.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = (h @ weight.t()).float()
        target_logit = logits.gather(1, targets[:, None]).squeeze(1)
        top = logits.amax(dim=-1)
        e = logits.sub_(top[:, None]).exp_()  # in place: the logits buffer becomes exp(logits - max)
        total = e.sum(dim=-1)
        ctx.save_for_backward(h, weight, targets, e, total)
        return total.log() + top - target_logit

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, weight, targets, e, total = ctx.saved_tensors
        g = e.mul_((grad / total)[:, None])  # softmax x upstream gradient, in place, one pass
        g[torch.arange(g.shape[0], device=g.device), targets] -= grad
        g = g.to(h.dtype)
        return g @ weight, g.t() @ h, None


def token_losses(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-token losses [N] for hidden [N, d] against targets [N]."""
    if hidden.shape[0] <= chunk:
        return LinearCrossEntropy.apply(hidden, head, targets)
    out = []
    for i in range(0, hidden.shape[0], chunk):
        h, t = hidden[i : i + chunk], targets[i : i + chunk]
        if torch.is_grad_enabled():
            out.append(checkpoint(LinearCrossEntropy.apply, h, head, t, use_reentrant=False))
        else:
            out.append(LinearCrossEntropy.apply(h, head, t))
    return torch.cat(out)
