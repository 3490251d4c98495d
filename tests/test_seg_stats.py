"""Paired statistics: bootstrap CI, Wilcoxon (including all-zero differences), counts and movers."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.seg.stats import bootstrap_mean_ci, movers, paired_summary, wilcoxon_p


def test_constant_difference_has_a_point_ci():
    a = np.full((3, 5), 0.6)
    low, high = bootstrap_mean_ci(a - 0.5)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_more_patients():
    rng = np.random.default_rng(0)
    small = rng.normal(0.05, 0.1, size=(3, 8))
    large = rng.normal(0.05, 0.1, size=(3, 200))
    low_s, high_s = bootstrap_mean_ci(small, samples=2000, seed=1)
    low_l, high_l = bootstrap_mean_ci(large, samples=2000, seed=1)
    assert low_s < small.mean() < high_s
    assert low_l < large.mean() < high_l
    assert high_l - low_l < high_s - low_s
    assert bootstrap_mean_ci(small, seed=3) == bootstrap_mean_ci(small, seed=3)


def test_bootstrap_resamples_seeds_too():
    # Patients agree perfectly within a seed, seeds disagree: the CI must not collapse.
    diff = np.array([[0.1] * 6, [-0.1] * 6, [0.3] * 6])
    low, high = bootstrap_mean_ci(diff, samples=2000)
    assert high - low > 0.1


def test_wilcoxon_all_zero_and_clear_shift():
    assert wilcoxon_p(np.zeros(7)) == 1.0
    assert wilcoxon_p(np.full(10, 0.05) + np.linspace(0, 0.01, 10)) < 0.01
    with pytest.raises(ValueError, match="no differences"):
        wilcoxon_p(np.array([]))


def test_paired_summary_hand_case():
    base = np.array([[0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.8]])
    aug = base + np.array([[0.1, -0.2, 0.0, 0.3], [0.1, -0.2, 0.0, 0.1]])
    s = paired_summary(base, aug, samples=500)
    assert s.mean == pytest.approx(0.025)
    np.testing.assert_allclose(s.per_patient, [0.1, -0.2, 0.0, 0.2])
    assert s.median == pytest.approx(0.05)
    assert (s.n_improved, s.n_worsened) == (2, 1)
    assert s.ci_low <= s.mean <= s.ci_high
    assert s.seed_std == pytest.approx(np.std([0.05, 0.0], ddof=1))
    metrics = s.as_metrics("dice_gain")
    assert metrics["dice_gain"] == s.mean and metrics["dice_gain_n_improved"] == 2.0
    with pytest.raises(ValueError, match="shape"):
        paired_summary(base, aug[:, :3])


def test_movers_largest_absolute_first():
    assert movers(["a", "b", "c", "d"], np.array([0.1, -0.5, 0.3, 0.0]), k=2) == [("b", -0.5), ("c", 0.3)]


def test_variance_components_and_mde_match_a_hand_computed_case():
    from toolkit.seg.stats import variance_components

    # Seed effect +-1, patient effect -1/0/+1, no interaction: by hand var_seed = 6/3 = 2 (MS_seed = 3 * 2 / 1),
    # var_patient = 2/2 = 1 (MS_patient = 2 * 2 / 2), residual 0; SE^2 = 2/2 + 1/3 = 4/3.
    power = variance_components(np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]))
    assert (power.var_seed, power.var_patient, power.var_residual) == pytest.approx((2.0, 1.0, 0.0))
    assert power.standard_error() == pytest.approx((4 / 3) ** 0.5)
    # (z_0.975 + z_0.8) = 1.959964 + 0.841621 = 2.801585
    assert power.mde() == pytest.approx(2.801585 * (4 / 3) ** 0.5, rel=1e-5)
    # More seeds and patients shrink it as the formula says.
    assert power.mde(n_seeds=8, n_patients=12) == pytest.approx(2.801585 * (2 / 8 + 1 / 12) ** 0.5, rel=1e-5)
    # One seed: all spread over patients is residual, SE = std / sqrt(P).
    one = variance_components(np.array([[0.1, 0.3, 0.2, 0.6]]))
    assert one.standard_error() == pytest.approx(np.std([0.1, 0.3, 0.2, 0.6], ddof=1) / 2)


def test_paired_summary_reports_halfwidth_and_mde():
    # B - A is the hand case above scaled by 0.01 (seed effect +-0.01, patient effect -0.01/0/+0.01), on
    # baselines that differ per cell: var_seed 2e-4, var_patient 1e-4, residual 0, SE^2 = 2e-4 / 2 + 1e-4 / 3.
    a = np.array([[0.50, 0.62, 0.71], [0.55, 0.48, 0.80]])
    b = a + 0.01 * np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    m = paired_summary(a, b, samples=500).as_metrics("g")
    assert m["g_ci_halfwidth"] == pytest.approx((m["g_ci_high"] - m["g_ci_low"]) / 2)
    assert (m["g_var_seed"], m["g_var_patient"], m["g_var_residual"]) == pytest.approx((2e-4, 1e-4, 0.0), abs=1e-12)
    se = (2e-4 / 2 + 1e-4 / 3) ** 0.5
    assert m["g_se"] == pytest.approx(se)
    assert m["g_mde80"] == pytest.approx(2.801585 * se, rel=1e-5)
