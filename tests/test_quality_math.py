"""Metric math against closed forms, hand-worked examples and reference packages."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from toolkit.metrics.frechet import (
    bootstrap_frechet,
    frechet_distance,
    frechet_distance_features,
    gaussian_stats,
)
from toolkit.metrics.kid import kernel_inception_distance, polynomial_mmd2
from toolkit.metrics.nearest import kth_neighbour_distance, nearest_neighbour
from toolkit.metrics.prdc import prdc
from toolkit.metrics.ssim import mean_pairwise_ms_ssim, ms_ssim, ms_ssim_scales, ssim_components

# Fréchet distance ----------------------------------------------------------------------


def test_frechet_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(60, 8))
    assert frechet_distance_features(x, x) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(*gaussian_stats(x), *gaussian_stats(x)) == pytest.approx(0, abs=1e-9)


def test_frechet_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)
    # A common rotation of both covariances leaves the distance unchanged.
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pytorch-fid passes a deprecated scipy argument
@pytest.mark.parametrize("n1,n2,dim", [(300, 250, 16), (40, 50, 64)])
def test_frechet_matches_pytorch_fid(n1, n2, dim):
    """Both the D x D form (N > D) and the Gram form (N < D) agree with pytorch-fid's sqrtm."""
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n1, dim)) @ rng.normal(size=(dim, dim)) * 0.3
    y = rng.normal(size=(n2, dim)) * 1.2 + 0.2
    reference = fid_score.calculate_frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    assert frechet_distance_features(x, y) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(*gaussian_stats(x), *gaussian_stats(y)) == pytest.approx(reference, rel=1e-6)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="matching shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        frechet_distance_features(np.zeros((5, 3)), np.zeros((5, 4)))


def test_bootstrap_interval_matches_the_spread_of_fresh_synthetic_samples():
    """The interval is over the synthetic sample: its width matches how FD varies between new samples."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(80, 4)), rng.normal(size=(80, 4)) + 1.0
    low, high = bootstrap_frechet(x, y, rounds=200, seed=0)
    assert (low, high) == bootstrap_frechet(x, y, rounds=200, seed=0)
    assert 0 <= low < frechet_distance_features(x, y) < high
    fresh = [frechet_distance_features(x, rng.normal(size=(80, 4)) + 1.0) for _ in range(200)]
    ratio = (high - low) / (2 * 1.96 * np.std(fresh))
    assert 0.7 < ratio < 1.4, ratio
    assert np.isnan(bootstrap_frechet(x, y, rounds=0)[0])


# KID -----------------------------------------------------------------------------------


def _naive_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1) ** 3

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_polynomial_mmd_matches_the_definition():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) + 0.5
    assert polynomial_mmd2(x, y) == pytest.approx(_naive_unbiased_mmd2(x, y), rel=1e-10)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    mean, std, m = kernel_inception_distance(x, y, subset_size=50, subsets=50)
    assert m == 50 and std > 0
    assert abs(mean) < 3 * std
    shifted, shifted_std, _ = kernel_inception_distance(x, y + 1.0, subset_size=50, subsets=50)
    assert shifted > mean + 5 * shifted_std


def test_kid_subset_clipped_to_smaller_set():
    rng = np.random.default_rng(6)
    _, _, m = kernel_inception_distance(rng.normal(size=(30, 4)), rng.normal(size=(12, 4)), subset_size=100)
    assert m == 12
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(rng.normal(size=(30, 4)), rng.normal(size=(1, 4)))


# PRDC ----------------------------------------------------------------------------------


def test_prdc_hand_worked_example():
    """Real 0,1,2,3 and fake 0.5, 10 on a line with k=1 (worked out by hand in the comments)."""
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [10.0]])
    # real radii are all 1; fake radii are both 9.5.
    scores = prdc(real, fake, k=1)
    assert scores["precision"] == 0.5  # 0.5 lies in real balls, 10 in none
    assert scores["recall"] == 1.0  # every real point lies within 9.5 of 0.5
    assert scores["density"] == 1.0  # 0.5 lies in 2 real balls: 2 / (k * 2 fakes)
    assert scores["coverage"] == 0.5  # only 0 and 1 have a fake within radius 1


def test_prdc_identical_and_disjoint_sets():
    x = np.random.default_rng(7).normal(size=(40, 5))
    same = prdc(x, x, k=3)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    far = prdc(x, x + 100, k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    with pytest.raises(ValueError, match="k=40"):
        prdc(x, x, k=40)


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(8)
    q, r = rng.normal(size=(13, 3)), rng.normal(size=(20, 3))
    dist, index = nearest_neighbour(q, r, chunk=4)
    full = np.linalg.norm(q[:, None] - r[None], axis=2)
    np.testing.assert_allclose(dist, full.min(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(index, full.argmin(axis=1))
    self_d = np.linalg.norm(r[:, None] - r[None], axis=2)
    np.testing.assert_allclose(kth_neighbour_distance(r, 2), np.sort(self_d, axis=1)[:, 2], rtol=1e-12)


# MS-SSIM -------------------------------------------------------------------------------


def test_ssim_matches_a_scipy_gaussian_filter_reference():
    """Single-scale SSIM against the formula evaluated with scipy.ndimage on the valid region."""
    rng = np.random.default_rng(9)
    x = ndimage.gaussian_filter(rng.uniform(-1, 1, (32, 32)), 2)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), -1, 1)

    def blur(a):  # 11-tap Gaussian (radius 5, sigma 1.5), then crop to where the window fits
        return ndimage.gaussian_filter(a, 1.5, truncate=5 / 1.5, mode="constant")[5:-5, 5:-5]

    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    expected = np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    ssim, _ = ssim_components(torch.tensor(x)[None, None], torch.tensor(y)[None, None])
    assert float(ssim) == pytest.approx(expected, rel=1e-9)


def test_ms_ssim_identity_constants_and_scales():
    assert ms_ssim_scales(64) == 3 and ms_ssim_scales(32) == 2 and ms_ssim_scales(256) == 5
    with pytest.raises(ValueError, match="at least 11"):
        ms_ssim_scales(8)
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(3))
    # Two flat images: contrast-structure is 1 at every scale, so MS-SSIM is the luminance term
    # raised to the (renormalised) coarsest-scale weight.
    a, b = torch.full((1, 1, 64, 64), 0.5, dtype=torch.float64), torch.full((1, 1, 64, 64), -0.2, dtype=torch.float64)
    c1 = (0.01 * 2) ** 2
    luminance = (2 * 0.5 * -0.2 + c1) / (0.5**2 + 0.2**2 + c1)
    weight = 0.3001 / (0.0448 + 0.2856 + 0.3001)
    assert float(ms_ssim(a, b)) == pytest.approx(max(luminance, 0) ** weight, abs=1e-12)
    noisy = (x + 0.5 * torch.randn_like(x)).clamp(-1, 1)
    assert (ms_ssim(x, noisy) < 0.9).all()


def test_pairwise_ms_ssim_is_one_for_a_collapsed_set():
    same = np.repeat(np.random.default_rng(10).uniform(-1, 1, (1, 32, 32)), 6, axis=0)
    value, pairs = mean_pairwise_ms_ssim(same, pairs=100)
    assert value == pytest.approx(1.0, abs=1e-5) and pairs == 15  # all 6*5/2 pairs
    varied = np.random.default_rng(11).uniform(-1, 1, (50, 32, 32))
    value, pairs = mean_pairwise_ms_ssim(varied, pairs=40, seed=0)
    assert value < 0.2 and pairs == 40
