"""Segmenter augmentation: one random geometric transform per pair, applied to image and mask alike.

The downstream U-Net sees few real patients, so it gets the standard cheap
augmentations (flips, a small affine, intensity jitter, optionally a smooth
elastic deformation). Geometry is sampled once per pair and applied to the
image (bilinear) and the mask (bilinear then thresholded at 0.5, so it stays
in {0, 1} and keeps smooth edges). Intensity jitter touches the image only.
Every random number comes from the ``torch.Generator`` passed in, so a batch
is reproduced exactly from the generator's state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _elastic_field(n: int, size: tuple[int, int], strength: float, grid: int,
                   generator: torch.Generator) -> torch.Tensor:
    """A smooth random displacement [N, H, W, 2] in normalised coordinates.

    Random offsets on a coarse ``grid x grid`` lattice, upsampled bicubically:
    the deformation is smooth at the scale of the gland, never a pixel shuffle.
    """
    coarse = torch.randn(n, 2, grid, grid, generator=generator) * strength
    field = F.interpolate(coarse, size=size, mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


def augment_batch(
    image: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator,
    *,
    flip: bool = True,
    rotate_deg: float = 10.0,
    scale: float = 0.1,
    translate: float = 0.05,
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
    gamma: float = 0.2,
    elastic: float = 0.0,
    elastic_grid: int = 4,
    p_affine: float = 0.8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (image, mask) pairs identically; deterministic given ``generator``.

    Args:
        image: float [N, 1, H, W] in [-1, 1].
        mask: float [N, 1, H, W] in {0, 1}.
        generator: the source of every random number (CPU generator).
        flip: random left-right flip (the pelvis is roughly symmetric; up-down
            flips would put the rectum in front of the gland, so they are not used).
        rotate_deg: rotation drawn uniformly in +-rotate_deg degrees.
        scale: isotropic zoom drawn in [1 - scale, 1 + scale].
        translate: shift drawn in +-translate of the image side, per axis.
        intensity_scale / intensity_shift: image * (1 + a) + b with a, b drawn
            in +-intensity_scale / +-intensity_shift.
        gamma: gamma drawn in [1 - gamma, 1 + gamma], applied on [0, 1].
        elastic: standard deviation of the elastic displacement in normalised
            units, where 2 is the image side (0.03 is about one pixel at
            64 x 64); 0 disables it.
        elastic_grid: coarse lattice of the elastic field (smaller = smoother).
        p_affine: probability that a pair gets the affine (and elastic) transform.

    Returns:
        The augmented image (clamped to [-1, 1]) and mask (in {0, 1}), same shapes.
    """
    if image.dim() != 4 or image.shape[1] != 1 or image.shape != mask.shape:
        raise ValueError(
            f"augment_batch needs image and mask of the same shape [N, 1, H, W], "
            f"got {tuple(image.shape)} and {tuple(mask.shape)}"
        )
    n, _, h, w = image.shape
    dtype = image.dtype
    image = image.float()
    mask = mask.float()

    # Geometry: flip, rotation, zoom, shift as one affine matrix per pair.
    sign = torch.ones(n)
    if flip:
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    angle = _uniform(n, -rotate_deg, rotate_deg, generator) * math.pi / 180
    zoom = _uniform(n, 1 - scale, 1 + scale, generator)
    shift = _uniform(2 * n, -translate, translate, generator).view(n, 2) * 2  # normalised units
    use = (torch.rand(n, generator=generator) < p_affine).float()
    angle, zoom, shift = angle * use, 1 + (zoom - 1) * use, shift * use[:, None]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos * sign, -sin, shift[:, 0]], 1), torch.stack([sin * sign, cos, shift[:, 1]], 1)],
        dim=1,
    )
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if elastic > 0:
        grid = grid + _elastic_field(n, (h, w), elastic, elastic_grid, generator) * use[:, None, None, None]

    # Resample: the image's background is -1, so pad with it; masks pad with 0.
    image = F.grid_sample(image + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    mask = (F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5)

    # Intensity: gamma on [0, 1], then scale and shift.
    g = _uniform(n, 1 - gamma, 1 + gamma, generator).view(n, 1, 1, 1)
    image = ((image + 1) / 2).clamp(0, 1).pow(g) * 2 - 1
    a = _uniform(n, -intensity_scale, intensity_scale, generator).view(n, 1, 1, 1)
    b = _uniform(n, -intensity_shift, intensity_shift, generator).view(n, 1, 1, 1)
    image = (image * (1 + a) + b).clamp(-1, 1)
    return image.to(dtype), mask.to(dtype)


#: Segmenter augmentation levels (``seg.augment``), weakest first.
LEVELS = ("none", "standard", "strong")


def _gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image [N, 1, H, W] with its own Gaussian ``sigma`` [N] (pixels); sigma 0 keeps it as it is."""
    radius = 3
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-x[None] ** 2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # [N, 7], separable
    n = image.shape[0]
    out = (image + 1).transpose(0, 1)  # [1, N, H, W]; pad with the background (0 after the shift)
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0)), kernel[:, None, None, :], groups=n)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius)), kernel[:, None, :, None], groups=n)
    return out.transpose(0, 1) - 1


def augment_strong(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator,
                   elastic: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """What nnU-Net-style 2D pipelines apply, at this toolkit's slice size; deterministic given ``generator``.

    Geometry: rotation +-30 deg, zoom 0.7-1.3, shift +-10%, elastic (at least 0.04), on 90% of pairs.
    Intensity, each on a share of pairs as nnU-Net does: gamma 0.6-1.4 (all), brightness x0.75-1.25
    (15%), contrast 0.75-1.25 about the image mean (15%), low resolution (25%: down to 0.5-1x, back
    up), Gaussian blur sigma 0.5-1 px (20%), Gaussian noise std up to 0.1 (15%). Every random number is
    drawn for every pair, used or not, so a batch's draws never depend on which operations fired.
    """
    image, mask = augment_batch(image, mask, generator, rotate_deg=30.0, scale=0.3, translate=0.1,
                                intensity_scale=0.0, intensity_shift=0.0, gamma=0.4,
                                elastic=max(elastic, 0.04), p_affine=0.9)
    n, _, h, w = image.shape
    dtype = image.dtype
    image = image.float()

    def pick(p: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) < p).float().view(n, 1, 1, 1)

    use, factor = pick(0.15), _uniform(n, 0.75, 1.25, generator).view(n, 1, 1, 1)
    image = torch.where(use > 0, (image + 1) * factor - 1, image)  # brightness on [0, 2]
    use, factor = pick(0.15), _uniform(n, 0.75, 1.25, generator).view(n, 1, 1, 1)
    mean = image.mean(dim=(2, 3), keepdim=True)
    image = torch.where(use > 0, (image - mean) * factor + mean, image)
    use, zoom = pick(0.25), _uniform(n, 0.5, 1.0, generator)
    low = torch.stack([
        F.interpolate(F.interpolate(image[i:i + 1], size=(max(1, round(h * float(z))), max(1, round(w * float(z)))),
                                    mode="nearest"), size=(h, w), mode="bicubic", align_corners=False)[0]
        for i, z in enumerate(zoom)])
    image = torch.where(use > 0, low, image)
    use, sigma = pick(0.2), _uniform(n, 0.5, 1.0, generator)
    image = torch.where(use > 0, _gaussian_blur(image, sigma), image)
    use, std = pick(0.15), _uniform(n, 0.0, 0.1, generator).view(n, 1, 1, 1)
    noise = torch.randn(image.shape, generator=generator) * std
    image = torch.where(use > 0, image + noise, image)
    return image.clamp(-1, 1).to(dtype), mask


def augment_level(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, level: str,
                  elastic: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a segmenter batch at ``level`` (``seg.augment``): none, standard (:func:`augment_batch`'s
    defaults plus ``elastic``) or strong (:func:`augment_strong`)."""
    if level == "none":
        return image, mask
    if level == "standard":
        return augment_batch(image, mask, generator, elastic=elastic)
    if level == "strong":
        return augment_strong(image, mask, generator, elastic=elastic)
    raise ValueError(f"seg.augment must be one of {', '.join(LEVELS)}, got {level!r}")
