"""Cross-entropy in chunks: the head and the loss of a chunk are recomputed in backward, so the
[tokens x vocab] logits never exist whole (49k vocabulary x 32k context = 6.4 GB per sequence)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

OBJECTIVES = {1: "ntp", 2: "fim", 3: "sfim"}  # data/stream.py's per-token codes; 0 is padding


def _chunk_losses(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (h @ weight.t()).float()
    return F.cross_entropy(logits, targets, reduction="none")


def token_losses(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-token losses [N] for hidden [N, d] against targets [N]."""
    out = []
    for i in range(0, hidden.shape[0], chunk):
        h, t = hidden[i : i + chunk], targets[i : i + chunk]
        if torch.is_grad_enabled():
            out.append(checkpoint(_chunk_losses, h, head, t, use_reentrant=False))
        else:
            out.append(_chunk_losses(h, head, t))
    return torch.cat(out)


def objective_sums(losses: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[4, 2] of (loss sum, token count) per objective code, detached, for logging."""
    rows = [torch.stack([losses[codes == c].sum(), (codes == c).sum().to(losses.dtype)]) for c in range(4)]
    return torch.stack(rows).detach()
