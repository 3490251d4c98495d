"""Images for people: sample grids with the mask drawn as a coloured outline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

OUTLINE_RGB = (1.0, 0.25, 0.1)  # orange-red: visible on grey MR, not a clinical colour code


def mask_outline(mask: torch.Tensor) -> torch.Tensor:
    """Boundary pixels of a binary mask [N, 1, H, W] (mask minus its 3x3 erosion)."""
    eroded = -F.max_pool2d(-mask, kernel_size=3, stride=1, padding=1)
    return (mask - eroded).clamp(0, 1)


def overlay(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RGB [N, 3, H, W] in [0, 1]: the grey image with the mask's outline in colour."""
    grey = ((image.float().clamp(-1, 1) + 1) / 2).repeat(1, 3, 1, 1)
    edge = mask_outline((mask.float() > 0.5).float())
    colour = torch.tensor(OUTLINE_RGB, dtype=grey.dtype).view(1, 3, 1, 1)
    return grey * (1 - edge) + colour * edge


def pair_grid(image: torch.Tensor, mask: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """A [3, H', W'] grid of overlays, ready for TensorBoard or ``save_image``."""
    return make_grid(overlay(image.cpu(), mask.cpu()), nrow=nrow, padding=2, pad_value=1.0)


def side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 6) -> torch.Tensor:
    """Two [3, H, W] grids next to each other (heights padded to match)."""
    height = max(left.shape[1], right.shape[1])
    left = F.pad(left, (0, 0, 0, height - left.shape[1]), value=1.0)
    right = F.pad(right, (0, 0, 0, height - right.shape[1]), value=1.0)
    spacer = torch.ones(3, height, gap)
    return torch.cat([left, spacer, right], dim=2)
