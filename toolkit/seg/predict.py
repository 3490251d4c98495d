"""Prediction slice by slice, stacked back into per-patient 3D volumes, and per-patient scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toolkit.data.slices import SliceSet
from toolkit.runtime import autocast
from toolkit.seg.metrics import dice, hd95


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module,
    images: np.ndarray,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Gland probabilities float32 [N, H, W] for images float32 [N, H, W]."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = np.empty(images.shape, dtype=np.float32)
    try:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))[:, None].float()
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                logits = model(x)
            out[start:start + len(x)] = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
    finally:
        model.train(was_training)
    return out


def stack_volumes(slices: SliceSet, values: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per patient: (values [Z, H, W], truth masks [Z, H, W]) ordered by slice index.

    ``values`` is row-aligned with ``slices`` (e.g. predicted masks). Patients
    keep their order of first appearance.
    """
    volumes = {}
    for patient in slices.patients():
        rows = np.flatnonzero(slices.patient == patient)
        rows = rows[np.argsort(slices.slice_index[rows], kind="stable")]
        volumes[patient] = (values[rows], slices.masks[rows].astype(bool))
    return volumes


def volume_dice(
    model: torch.nn.Module,
    slices: SliceSet,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> float:
    """Mean 3D Dice over the patients of ``slices``: the model-selection score (no HD95, so it is cheap)."""
    probs = predict_probs(model, slices.images, batch_size, device, amp_dtype, channels_last)
    return float(np.mean([dice(prob > 0.5, truth) for prob, truth in stack_volumes(slices, probs).values()]))


@dataclass
class PatientScore:
    """Test metrics of one patient: 3D Dice (the headline), HD95, mean slice Dice on gland slices."""

    patient: str
    dice: float
    hd95: float
    slice_dice: float
    n_slices: int
    gland_voxels: int
    predicted_voxels: int


def score_patients(
    model: torch.nn.Module,
    slices: SliceSet,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> list[PatientScore]:
    """Segment every slice, stack per patient, and score each patient's volume.

    HD95 is in voxel units of the preprocessed slices (in-plane pixels, and one
    unit per slice along z); see :mod:`toolkit.seg.metrics` for the rules on
    empty masks. ``slice_dice`` averages 2D Dice over the slices whose truth has
    gland (NaN for a patient without any).
    """
    probs = predict_probs(model, slices.images, batch_size, device, amp_dtype, channels_last)
    scores = []
    for patient, (prob, truth) in stack_volumes(slices, probs).items():
        pred = prob > 0.5
        gland = truth.reshape(len(truth), -1).any(axis=1)
        per_slice = [dice(p, t) for p, t in zip(pred[gland], truth[gland])]
        scores.append(PatientScore(
            patient=patient,
            dice=dice(pred, truth),
            hd95=hd95(pred, truth),
            slice_dice=float(np.mean(per_slice)) if per_slice else float("nan"),
            n_slices=len(truth),
            gland_voxels=int(truth.sum()),
            predicted_voxels=int(pred.sum()),
        ))
    return scores
