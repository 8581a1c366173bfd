"""Loss bookkeeping per objective, from the stream's per-token codes (the loss itself: model/loss.py)."""

from __future__ import annotations

import torch

OBJECTIVES = {1: "ntp", 2: "fim", 3: "sfim"}  # data/stream.py's per-token codes; 0 is padding


def objective_sums(losses: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[4, 2] of (loss sum, token count) per objective code, detached, for logging."""
    rows = [torch.stack([losses[codes == c].sum(), (codes == c).sum().to(losses.dtype)]) for c in range(4)]
    return torch.stack(rows).detach()
