"""Nearest-neighbour distances, computed in chunks so N x M never sits in memory at once."""

from __future__ import annotations

import numpy as np
import torch


def pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances [N, M] between rows, in float64."""
    return torch.cdist(torch.as_tensor(x, dtype=torch.float64)[None],
                       torch.as_tensor(y, dtype=torch.float64)[None])[0].numpy()


def kth_neighbour_distance(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of ``x`` to its k-th nearest other row of ``x``."""
    if not 1 <= k < len(x):
        raise ValueError(f"k-NN radius needs 1 <= k < N, got k={k} with N={len(x)}")
    d = pairwise_distances(x, x)
    # The k+1-th smallest in each row, since the smallest is the row itself (distance 0).
    return np.partition(d, k, axis=1)[:, k]


def nearest_neighbour(query: np.ndarray, reference: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the distance to and index of its nearest reference row.

    Args:
        query: [N, D]; reference: [M, D]. Pixel data is flattened by the caller.
        chunk: query rows per cdist call (memory: chunk x M float64).
    """
    ref = torch.as_tensor(reference, dtype=torch.float64)
    dist = np.empty(len(query))
    index = np.empty(len(query), dtype=np.int64)
    for start in range(0, len(query), chunk):
        q = torch.as_tensor(query[start:start + chunk], dtype=torch.float64)
        d = torch.cdist(q[None], ref[None])[0]
        best = d.min(dim=1)
        dist[start:start + chunk] = best.values.numpy()
        index[start:start + chunk] = best.indices.numpy()
    return dist, index
