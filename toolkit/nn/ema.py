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


class RampedEMA(EMA):
    """An EMA whose decay follows a half-life in training images with a ramp-up (StyleGAN2-ADA).

    Per update of ``batch_images`` images the decay is ``0.5 ** (batch_images / half_life)``,
    where the half-life is ``half_life_images`` but at most ``rampup`` x the images seen so far
    (``rampup`` 0: no ramp-up): the first steps copy the network and the average lengthens as
    training goes on. This replaces :class:`EMA`'s ``(1 + n) / (10 + n)`` warm-up. The owner calls
    :meth:`ramp` before each :meth:`update`; the decay in use is in the ``state_dict``.

    Args:
        module: the network to track; it is deep-copied once.
        half_life_images: the half-life of the average, in training images.
        rampup: the ramp-up, as a fraction of the images seen.
    """

    def __init__(self, module: nn.Module, half_life_images: float, rampup: float = 0.05) -> None:
        super().__init__(module, 0.0)
        self.half_life_images = half_life_images
        self.rampup = rampup

    def decay_for(self, images_seen: float, batch_images: int) -> float:
        """The decay per update of ``batch_images`` images once ``images_seen`` have been seen."""
        half_life = self.half_life_images
        if self.rampup > 0:
            half_life = min(half_life, images_seen * self.rampup)
        return 0.5 ** (batch_images / max(half_life, 1e-8))

    def ramp(self, images_seen: float, batch_images: int) -> None:
        """Set the decay of the next update (:meth:`decay_for`)."""
        self.decay = self.decay_for(images_seen, batch_images)

    def current_decay(self) -> float:
        return self.decay


def ema_or_net(ema: EMA | None, net: nn.Module) -> nn.Module:
    """The network to sample with: the EMA copy when one is kept, else ``net`` itself."""
    return ema.module if ema is not None else net
