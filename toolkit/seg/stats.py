"""Paired statistics of per-patient Dice between two arms of the protocol.

The unit of pairing is a (seed, test patient) cell: both arms share the seed
(initial weights, batch order) and the patient. The bootstrap resamples seeds
and patients independently (a two-way bootstrap), so its CI covers both
sources of spread. The Wilcoxon signed-rank test runs on per-patient
differences averaged over seeds, because cells of one patient under
different seeds are not independent observations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class PairedSummary:
    """Gain of arm B over arm A (B - A) in Dice."""

    mean: float
    ci_low: float
    ci_high: float
    median: float
    p_wilcoxon: float
    n_improved: int
    n_worsened: int
    seed_std: float
    per_patient: np.ndarray  # [P] mean difference over seeds
    power: Power | None = None  # variance components and the design's minimum detectable effect

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            prefix: self.mean,
            f"{prefix}_ci_low": self.ci_low,
            f"{prefix}_ci_high": self.ci_high,
            f"{prefix}_median": self.median,
            f"{prefix}_p_wilcoxon": self.p_wilcoxon,
            f"{prefix}_n_improved": float(self.n_improved),
            f"{prefix}_n_worsened": float(self.n_worsened),
            f"{prefix}_seed_std": self.seed_std,
            f"{prefix}_ci_halfwidth": (self.ci_high - self.ci_low) / 2,
            **({} if self.power is None else self.power.as_metrics(prefix)),
        }


@dataclass
class Power:
    """Variance components of a [seeds, patients] difference matrix and what the design can detect.

    The mean of a two-way layout (seed effect + patient effect + residual) has
    variance ``var_seed / S + var_patient / P + var_residual / (S P)``; the
    minimum detectable effect at power ``1 - beta`` for a two-sided test at
    ``alpha`` is ``(z_{1 - alpha / 2} + z_{1 - beta}) * sqrt(that)``, about
    2.8 standard errors at 80% power and alpha 0.05.
    """

    var_seed: float
    var_patient: float
    var_residual: float
    n_seeds: int
    n_patients: int

    def standard_error(self, n_seeds: int | None = None, n_patients: int | None = None) -> float:
        s, p = n_seeds or self.n_seeds, n_patients or self.n_patients
        return float(np.sqrt(self.var_seed / s + self.var_patient / p + self.var_residual / (s * p)))

    def mde(self, power: float = 0.8, alpha: float = 0.05, n_seeds: int | None = None,
            n_patients: int | None = None) -> float:
        """Smallest true gain this design (or one with other counts) detects with probability ``power``."""
        from statistics import NormalDist

        z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
        return z * self.standard_error(n_seeds, n_patients)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_mde80": self.mde(), f"{prefix}_se": self.standard_error(),
                f"{prefix}_var_seed": self.var_seed, f"{prefix}_var_patient": self.var_patient,
                f"{prefix}_var_residual": self.var_residual}


def variance_components(diff: np.ndarray) -> Power:
    """Two-way ANOVA (method of moments) estimates of seed, patient and residual variance, clipped at 0.

    With one seed (or one patient) the components cannot be told apart: the
    whole spread is reported as residual, which gives the right standard error
    for that design.
    """
    d = np.asarray(diff, dtype=float)
    s, p = d.shape
    grand = d.mean()
    seed_means, patient_means = d.mean(axis=1), d.mean(axis=0)
    resid = d - seed_means[:, None] - patient_means[None, :] + grand
    if s == 1 or p == 1:
        # One row or column: no interaction term, so all the spread is one component (kept as residual:
        # the mean's variance is then var / (S * P), as it should be).
        return Power(0.0, 0.0, float(d.var(ddof=1)) if d.size > 1 else 0.0, s, p)
    ms_seed = p * ((seed_means - grand) ** 2).sum() / (s - 1)
    ms_patient = s * ((patient_means - grand) ** 2).sum() / (p - 1)
    ms_resid = (resid ** 2).sum() / ((s - 1) * (p - 1))
    var_seed = max((ms_seed - ms_resid) / p, 0.0)
    var_patient = max((ms_patient - ms_resid) / s, 0.0)
    return Power(float(var_seed), float(var_patient), float(ms_resid), s, p)


def bootstrap_mean_ci(diff: np.ndarray, samples: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``diff`` [seeds, patients], resampling both axes."""
    diff = np.asarray(diff, dtype=float)
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError(f"need a non-empty [seeds, patients] array, got shape {diff.shape}")
    n_seeds, n_patients = diff.shape
    rng = np.random.default_rng(seed)
    s = rng.integers(n_seeds, size=(samples, n_seeds))
    p = rng.integers(n_patients, size=(samples, n_patients))
    means = diff[s[:, :, None], p[:, None, :]].mean(axis=(1, 2))
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; 1.0 when every difference is zero (no evidence of change)."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        raise ValueError("Wilcoxon test on no differences")
    if np.all(d == 0):
        return 1.0
    from scipy import stats  # imported here: scipy.stats takes seconds to import, most commands never need it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample and tie warnings; the p-value is still right
        return float(stats.wilcoxon(d, zero_method="wilcox").pvalue)


def paired_summary(a: np.ndarray, b: np.ndarray, samples: int = 2000, seed: int = 0) -> PairedSummary:
    """Summarise B - A over aligned [seeds, patients] Dice arrays.

    ``n_improved`` / ``n_worsened`` count patients whose seed-averaged Dice
    went up / down by more than 1e-9.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    diff = b - a
    low, high = bootstrap_mean_ci(diff, samples, seed)
    per_patient = diff.mean(axis=0)
    return PairedSummary(
        mean=float(diff.mean()),
        ci_low=low,
        ci_high=high,
        median=float(np.median(per_patient)),
        p_wilcoxon=wilcoxon_p(per_patient),
        n_improved=int((per_patient > 1e-9).sum()),
        n_worsened=int((per_patient < -1e-9).sum()),
        seed_std=float(diff.mean(axis=1).std(ddof=1)) if diff.shape[0] > 1 else 0.0,
        per_patient=per_patient,
        power=variance_components(diff),
    )


def movers(patients: list[str], per_patient: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` patients whose Dice moved most (by absolute difference), largest first."""
    order = np.argsort(-np.abs(per_patient), kind="stable")[:k]
    return [(patients[i], float(per_patient[i])) for i in order]
