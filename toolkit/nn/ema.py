"""Exponential moving average of a network's weights, for sampling.

GAN and VAE weights jitter from step to step; an average over the last few
hundred steps gives steadier, usually cleaner samples (Karras et al., 2018;
Yazici et al., 2019). Any generator can keep one:

    self.ema = EMA(self.decoder, decay=0.999)
    ...  # after each optimizer step
    self.ema.update(self.decoder)
    ...  # when sampling
    self.ema.module(z)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """A frozen copy of ``module`` whose weights track an exponential average.

    Early on the effective decay is ``min(decay, (1 + n) / (10 + n))`` after
    ``n`` updates, so the average is not dominated by the random initial
    weights in a short run. Buffers (such as normalisation statistics) are
    copied, not averaged.

    Args:
        module: the network to track; it is deep-copied once.
        decay: weight of the old average per update (0.999 averages over about
            the last 1000 steps).
    """

    def __init__(self, module: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use (with the warm-up)."""
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards ``module``'s current weights."""
        decay = self.current_decay()
        for avg, new in zip(self.module.parameters(), module.parameters(), strict=True):
            avg.lerp_(new.detach().to(avg.dtype), 1.0 - decay)
        for avg, new in zip(self.module.buffers(), module.buffers(), strict=True):
            avg.copy_(new)
        self.num_updates += 1

    def to(self, device: torch.device | str) -> EMA:
        self.module.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])


def ema_or_net(ema: EMA | None, net: nn.Module) -> nn.Module:
    """The network to sample with: the EMA copy when one is kept, else ``net`` itself."""
    return ema.module if ema is not None else net
