"""(image, mask) pairs as one network tensor and back.

Generators of pairs stack the image channels and the mask as channels of one
tensor: for a discriminator's input, or as what a diffusion model diffuses.
The mask (in {0, 1}, or probabilities) is mapped to [-1, 1] like the image;
a network's mask channel (a logit, or a value in [-1, 1]) is foreground where
it is above 0.
"""

from __future__ import annotations

import torch


def encode_pair(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stack image [-1, 1] and mask {0, 1} (or probabilities) as channels, the mask mapped to [-1, 1]."""
    return torch.cat([image, mask * 2.0 - 1.0], dim=1)


def decode_pair(image: torch.Tensor, mask_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sampled pair from a network's output: the image clamped to [-1, 1], the mask 1 where its score is > 0.

    ``mask_score`` is a mask logit or a mask channel in [-1, 1]; either way 0 is the boundary.
    """
    return image.clamp(-1.0, 1.0), (mask_score > 0).float()
