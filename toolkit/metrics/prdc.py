"""Precision, recall, density and coverage on k-NN manifolds (Naeem et al. 2020, ICML).

Each real feature gets a ball whose radius is the distance to its k-th
nearest real neighbour; the union of the balls estimates the real manifold.

- precision: share of synthetic samples inside the real manifold (fidelity);
- recall: share of real samples inside the synthetic manifold (built the
  same way from synthetic features), i.e. how much of the real variety is made;
- density: how many real balls hold each synthetic sample, divided by k
  (about 1 when the two distributions match; unbounded above, robust to
  real outliers where precision is not);
- coverage: share of real samples whose ball holds at least one synthetic
  sample (robust to synthetic outliers where recall is not).
"""

from __future__ import annotations

import numpy as np

from toolkit.metrics.nearest import kth_neighbour_distance, pairwise_distances


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density, coverage of ``fake`` [M, D] against ``real`` [N, D]."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"PRDC needs features of one dimension, got {real.shape[1]} and {fake.shape[1]}")
    if k < 1 or k >= min(len(real), len(fake)):
        raise ValueError(
            f"PRDC k={k} needs 1 <= k < min(N_real, N_synthetic) = {min(len(real), len(fake))}; "
            f"lower evaluators.prdc.k or evaluate more slices"
        )
    real_radius = kth_neighbour_distance(real, k)
    fake_radius = kth_neighbour_distance(fake, k)
    d = pairwise_distances(real, fake)  # [N_real, N_fake]
    inside_real = d <= real_radius[:, None]  # fake j inside real ball i
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d <= fake_radius[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum() / (k * len(fake))),
        "coverage": float((d.min(axis=1) <= real_radius).mean()),
    }
