"""Fréchet distance between Gaussians fitted to two feature sets.

Computed in float64 with symmetric eigen-decompositions instead of
``scipy.linalg.sqrtm``: SciPy 1.11.2-1.11.3 and 1.16 returned wrong square
roots there, and the general (non-symmetric) square root is also slower.
The identity used is

    tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2),

whose right-hand side is the square root of a symmetric positive
semi-definite matrix, so its trace is the sum of the square roots of its
(clipped non-negative) eigenvalues.

From features, with A [N1, D] and B [N2, D] the centred features scaled by
1/sqrt(N-1) (so S1 = A^T A, S2 = B^T B), the same trace is the sum of the
singular values of A B^T: the square roots of the eigenvalues of the
symmetric Gram matrix (A B^T)(A B^T)^T, which is only min(N1, N2) wide. At
the few hundred slices of a small data set and 2048 Inception features this
is much cheaper than the D x D form, and it is exact, not an approximation.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of features [N, D], in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
    sqrt_sigma1: np.ndarray | None = None,
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, sigma1, mu2, sigma2: means [D] and covariances [D, D].
        sqrt_sigma1: the symmetric square root of ``sigma1`` if already known
            (the real set's, reused across generators and bootstrap rounds).

    Returns:
        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2),
        clipped at 0 (round-off can make a near-zero distance slightly negative).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"Fréchet distance needs matching shapes: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}"
        )
    root1 = _sqrt_psd(sigma1) if sqrt_sigma1 is None else sqrt_sigma1
    inner = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean
    return float(max(value, 0.0))


def frechet_distance_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D].

    Uses the N x N Gram form when a set is smaller than the feature
    dimension, else the D x D covariance form; both give the same value.
    """
    x = np.asarray(real, np.float64)
    y = np.asarray(fake, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"Fréchet distance needs two [N, D] feature sets with N >= 2, got {x.shape} and {y.shape}")
    if min(len(x), len(y)) > x.shape[1]:
        return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    a = (x - mu_x) / np.sqrt(len(x) - 1)
    b = (y - mu_y) / np.sqrt(len(y) - 1)
    cross = a @ b.T  # [N1, N2]
    gram = cross @ cross.T if len(x) <= len(y) else cross.T @ cross
    eig = np.linalg.eigvalsh((gram + gram.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu_x - mu_y
    value = diff @ diff + (a * a).sum() + (b * b).sum() - 2 * tr_covmean
    return float(max(value, 0.0))


def bootstrap_frechet(
    real: np.ndarray, fake: np.ndarray, rounds: int = 20, seed: int = 0, level: float = 0.95,
) -> tuple[float, float]:
    """Bootstrap interval of the Fréchet distance over the synthetic sample.

    Only the synthetic set is resampled (with replacement): the real set is
    the common reference every generator is measured against, so the spread
    that matters when comparing generators is that of the synthetic sample.
    It also lets the real covariance's square root be computed once.
    Resampling duplicates rows, which inflates the Fréchet distance (it is
    biased upward, more so at small N), so the bootstrap distribution sits
    above the estimate. The interval is therefore bias-corrected: the mean
    bootstrap excess over the full-sample value is subtracted from both
    percentiles, and the result clipped at 0.

    Returns:
        (low, high) at ``level``; (nan, nan) when ``rounds`` is 0.
    """
    if rounds <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if min(len(real), len(fake)) > real.shape[1]:
        mu, sigma = gaussian_stats(real)
        root = _sqrt_psd(sigma)

        def distance(f: np.ndarray) -> float:
            return frechet_distance(mu, sigma, *gaussian_stats(f), sqrt_sigma1=root)
    else:
        def distance(f: np.ndarray) -> float:
            return frechet_distance_features(real, f)

    estimate = distance(fake)
    values = [distance(fake[rng.integers(0, len(fake), len(fake))]) for _ in range(rounds)]
    alpha = (1 - level) / 2
    bias = np.mean(values) - estimate
    low, high = np.quantile(values, [alpha, 1 - alpha]) - bias
    return float(max(low, 0.0)), float(max(high, 0.0))
