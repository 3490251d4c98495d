"""Standardisation of condition vectors by the training set's statistics, for conditional generators."""

from __future__ import annotations

import torch
from torch import nn


class CondNorm(nn.Module):
    """Standardises condition vectors with the training set's mean and std (buffers, so checkpointed).

    The gland area fraction varies by a few hundredths, the position by about
    one; standardising gives both the same say in the embeddings.
    """

    def __init__(self, cond_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(cond_dim))
        self.register_buffer("std", torch.ones(cond_dim))

    def fit(self, cond: torch.Tensor) -> None:
        cond = cond.float().to(self.mean.device)
        self.mean.copy_(cond.mean(dim=0))
        self.std.copy_(cond.std(dim=0).nan_to_num(1.0).clamp_min(1e-3) if len(cond) > 1 else torch.ones_like(self.std))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return (cond.float().to(self.mean.device) - self.mean) / self.std
