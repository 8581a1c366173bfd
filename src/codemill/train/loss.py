"""Loss bookkeeping per objective, from the stream's per-token codes (the loss itself: model/loss.py)."""

from __future__ import annotations

import torch

from codemill.data.objectives import Objective


def objective_sums(losses: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[len(Objective), 2] of (loss sum, token count) per objective code, detached, for logging."""
    rows = [torch.stack([losses[codes == c].sum(), (codes == c).sum().to(losses.dtype)]) for c in Objective]
    return torch.stack(rows).detach()
