"""Shared value types passed between the core and plugins."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataSpec:
    """What a generator needs to know about the data it will model.

    Attributes:
        image_size: side of the square slices in pixels (64, 128 or 256).
        channels: image channels (1 for a T2 slice).
        cond_dim: length of the per-slice condition vector (``toolkit.data.slices.COND_NAMES``:
            relative position in the gland's z-extent, gland area fraction); the core sets it from the data.
    """

    image_size: int = 64
    channels: int = 1
    cond_dim: int = 2


@dataclass
class Batch:
    """A batch of (image, mask[, cond]) pairs.

    Where its tensors live depends on the call: ``Generator.train_step`` gets them on the generator's
    device, ``Generator.sample`` returns them on the CPU (the rules are in ``toolkit.plugin``).

    Attributes:
        image: float tensor [N, C, H, W] in [-1, 1].
        mask: float tensor [N, 1, H, W] with values in {0, 1}.
        cond: float tensor [N, cond_dim], or None where it does not apply.
    """

    image: torch.Tensor
    mask: torch.Tensor
    cond: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.image.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        cond = None if self.cond is None else self.cond.to(device, non_blocking=non_blocking)
        return Batch(
            self.image.to(device, non_blocking=non_blocking),
            self.mask.to(device, non_blocking=non_blocking),
            cond,
        )
