"""MS-SSIM (Wang, Simoncelli and Bovik 2003) in torch ops, valid at 64 x 64.

The standard MS-SSIM uses five scales with an 11 x 11 Gaussian window
(sigma 1.5), which needs images of at least 161 pixels: at 64 x 64 the fourth
scale (8 x 8) is smaller than the window. Here the window and the per-scale
weights of Wang et al. are kept, only the scales at which the image is still
at least one window wide are used (64 -> 64, 32, 16: three scales), and their
weights are renormalised to sum to 1. Filtering uses only valid windows (no
padding), as in the reference implementation. Negative contrast-structure
terms (anti-correlated patches) are clipped to 0 before the fractional
powers, as pytorch-msssim does, so the value stays real and in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Per-scale exponents of Wang et al. 2003, finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _band(size: int, window: torch.Tensor) -> torch.Tensor:
    """[size, size - w + 1] matrix whose columns are the window at each valid offset."""
    w = len(window)
    band = torch.zeros(size, size - w + 1, dtype=window.dtype)
    for j in range(size - w + 1):
        band[j:j + w, j] = window
    return band


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable valid Gaussian filter of [N, 1, H, W].

    Written as two matrix products with banded matrices rather than conv2d:
    a single-channel 11-tap convolution is 5-8x slower on CPU than a GEMM.
    """
    rows = _band(x.shape[-2], window)
    cols = _band(x.shape[-1], window)
    return rows.T @ x @ cols


def ssim_components(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and mean contrast-structure term at one scale.

    Args:
        x, y: [N, 1, H, W] with H, W >= the window size.
        data_range: max - min of the intensity range (2 for [-1, 1]).

    Returns:
        (ssim [N], cs [N]).
    """
    if window is None:
        window = _gaussian_window(WINDOW_SIZE, WINDOW_SIGMA, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    # One filter pass over the five moment maps stacked along the batch.
    n = x.shape[0]
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=0)
    mu_x, mu_y, xx, yy, xy = _filter(moments, window).split(n, dim=0)
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs_map).mean(dim=(1, 2, 3)), cs_map.mean(dim=(1, 2, 3))


def ms_ssim_scales(size: int) -> int:
    """Number of scales usable at a given image side (each must be >= the window)."""
    if size < WINDOW_SIZE:
        raise ValueError(f"MS-SSIM needs images of at least {WINDOW_SIZE} pixels, got {size}")
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and size // 2**scales >= WINDOW_SIZE:
        scales += 1
    return scales


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """MS-SSIM of image pairs [N, 1, H, W] (or [N, H, W]); returns [N] in [0, 1]."""
    if x.dim() == 3:
        x, y = x[:, None], y[:, None]
    if x.shape != y.shape:
        raise ValueError(f"MS-SSIM needs images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    scales = ms_ssim_scales(min(x.shape[-2:]))
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    weights = (weights / weights.sum()).to(x.dtype)
    window = _gaussian_window(WINDOW_SIZE, WINDOW_SIGMA, x.dtype)
    terms = []
    for scale in range(scales):
        ssim, cs = ssim_components(x, y, data_range, window)
        # Finer scales contribute contrast-structure; the coarsest contributes full SSIM.
        terms.append(torch.relu(ssim if scale == scales - 1 else cs))
        if scale < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(terms, dim=1)  # [N, scales]
    return torch.prod(stacked ** weights, dim=1)


def mean_pairwise_ms_ssim(images: np.ndarray, pairs: int = 1000, seed: int = 0,
                          batch_size: int = 256) -> tuple[float, int]:
    """Mean MS-SSIM over random pairs of distinct images [N, H, W] in [-1, 1].

    High values mean the images look alike (low diversity; 1 for a collapsed
    generator). Pairs are drawn uniformly among distinct (i, j), or all pairs
    when there are fewer than ``pairs``.

    Returns:
        (mean MS-SSIM, number of pairs used).
    """
    n = len(images)
    if n < 2:
        raise ValueError(f"pairwise MS-SSIM needs at least 2 images, got {n}")
    all_pairs = n * (n - 1) // 2
    if all_pairs <= pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, pairs)
        j = (i + rng.integers(1, n, pairs)) % n  # j != i, uniform over the others
    data = torch.as_tensor(np.asarray(images, dtype=np.float32))
    values = []
    for start in range(0, len(i), batch_size):
        a = data[torch.as_tensor(i[start:start + batch_size])]
        b = data[torch.as_tensor(j[start:start + batch_size])]
        values.append(ms_ssim(a, b))
    return float(torch.cat(values).double().mean()), len(i)
