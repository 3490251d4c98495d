"""Overlap and boundary metrics on binary masks, with explicit rules for empty masks.

Rules (also in docs/evaluation.md):

* Dice: both masks empty -> 1.0 (nothing to find, nothing found); exactly one
  empty -> 0.0.
* HD95 (the larger of the two directed 95th-percentile surface distances, in
  the units of ``spacing``): both empty -> 0.0; exactly one empty -> the
  diagonal of the array's extent, the largest distance the array can hold, so
  a missed gland costs the most it can and means stay finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def _binary(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != bool:
        values = np.unique(a)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{name} must be binary (0/1), found values {values[:10].tolist()}")
        a = a.astype(bool)
    return a


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|P & T| / (|P| + |T|) of two binary arrays of the same shape."""
    pred, truth = _binary(pred, "prediction"), _binary(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one background neighbour (face connectivity)."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                    border_value=0)
    return mask & ~eroded


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between the mask surfaces.

    Args:
        pred, truth: binary arrays of the same shape (2D or 3D).
        spacing: voxel size per axis (e.g. mm); None means 1 per axis.

    Returns:
        max(P95 of pred-surface -> truth-surface distances, P95 of the
        reverse), in ``spacing`` units; 0.0 when both are empty and the
        extent's diagonal when exactly one is.
    """
    pred, truth = _binary(pred, "prediction"), _binary(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    spacing = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    if spacing.shape != (pred.ndim,):
        raise ValueError(f"spacing needs {pred.ndim} values, got {spacing.tolist()}")
    has_pred, has_truth = pred.any(), truth.any()
    if not has_pred and not has_truth:
        return 0.0
    if not has_pred or not has_truth:
        return float(np.sqrt((((np.asarray(pred.shape) - 1) * spacing) ** 2).sum()))
    pred_surface, truth_surface = _surface(pred), _surface(truth)
    # Distance of every voxel to the nearest surface voxel of the other mask.
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    forward = np.percentile(to_truth[pred_surface], 95)
    backward = np.percentile(to_pred[truth_surface], 95)
    return float(max(forward, backward))
