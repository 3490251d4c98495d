"""Kernel inception distance: unbiased squared MMD with a cubic polynomial kernel.

KID (Bińkowski et al. 2018) is unbiased, so unlike the Fréchet distance its
expected value does not depend on N, and it needs no covariance inverse or
square root: the better distribution metric at the few hundred slices a
small prostate data set gives. The kernel is k(x, y) = (x.y / D + 1)^3.
"""

from __future__ import annotations

import numpy as np


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between two samples [m, D] and [n, D] (diagonals of k(x, x), k(y, y) left out)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    term_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, subset_size: int = 100, subsets: int = 100, seed: int = 0,
) -> tuple[float, float, int]:
    """KID mean and standard deviation over random subsets.

    Args:
        real, fake: features [N_real, D], [N_fake, D].
        subset_size: slices per subset; clipped to the smaller set, since a
            subset larger than a set would repeat its rows.
        subsets: number of subsets drawn (without replacement within a subset).
        seed: subset sampling seed.

    Returns:
        (mean, std, subset size used).
    """
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"KID needs features of one dimension, got {real.shape[1]} and {fake.shape[1]}")
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 real and 2 synthetic slices, got {len(real)} and {len(fake)}")
    if subsets < 1:
        raise ValueError(f"KID subsets must be >= 1, got {subsets}")
    rng = np.random.default_rng(seed)
    values = np.array([
        polynomial_mmd2(real[rng.choice(len(real), m, replace=False)],
                        fake[rng.choice(len(fake), m, replace=False)])
        for _ in range(subsets)
    ])
    return float(values.mean()), float(values.std()), m
