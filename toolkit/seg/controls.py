"""Control arms: real slices made to look like the synthetic set in one respect, and the positive control.

``extra_real`` (the positive control) adds real pairs of patients outside
every split, at the synthetic set's ratio: its gain is what more real data is
worth, the effect a good generator would approach, and the yardstick of what
the protocol can resolve.

A Dice gain from synthetic data can come from something other than the
generator's skill. Generators often over-produce slices with gland, and the
class balance alone moves Dice; blurry synthetic images can act as a
regulariser. The controls replace the synthetic pool by real training slices
with the same property, so "gain over the control" isolates the rest.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

CONTROLS = ("balanced_real", "blurred_real", "extra_real")


def gland_share_weights(has_gland: np.ndarray, share: float) -> tuple[np.ndarray | None, float]:
    """Per-slice sampling weights that give gland slices the probability ``share``.

    Returns:
        (weights, achieved share). When the real set has only one kind of slice
        the share cannot be changed: weights are None (uniform) and the
        achieved share is the set's own.
    """
    has_gland = np.asarray(has_gland, dtype=bool)
    n_gland = int(has_gland.sum())
    n_empty = len(has_gland) - n_gland
    if n_gland == 0 or n_empty == 0:
        return None, n_gland / max(len(has_gland), 1)
    weights = np.where(has_gland, share / n_gland, (1 - share) / n_empty)
    return weights, float(share)


def sharpness(images: torch.Tensor) -> float:
    """Mean gradient magnitude of images [N, 1, H, W] (finite differences), a simple sharpness score."""
    dx = images[..., :, 1:] - images[..., :, :-1]
    dy = images[..., 1:, :] - images[..., :-1, :]
    return float((dx.abs().mean() + dy.abs().mean()) / 2)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of [N, 1, H, W] images with standard deviation ``sigma`` pixels (0: unchanged)."""
    if sigma <= 0:
        return images
    blurred = ndimage.gaussian_filter(images.detach().cpu().numpy(), sigma=(0, 0, sigma, sigma), mode="reflect")
    return torch.from_numpy(blurred).to(images)


def match_sharpness(real: torch.Tensor, synthetic: torch.Tensor, max_sigma: float = 4.0,
                    iterations: int = 20) -> float:
    """The blur sigma that brings the real images' sharpness down to the synthetic set's.

    Bisection on sigma in [0, max_sigma] (sharpness falls monotonically with
    sigma). Returns 0 when the synthetic set is at least as sharp as the real one.
    """
    target = sharpness(synthetic)
    if sharpness(real) <= target:
        return 0.0
    low, high = 0.0, max_sigma
    for _ in range(iterations):
        mid = (low + high) / 2
        if sharpness(blur(real, mid)) > target:
            low = mid
        else:
            high = mid
    return (low + high) / 2
