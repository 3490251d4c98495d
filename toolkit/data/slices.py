"""The in-memory form of a data set: 2D slices with their provenance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toolkit.types import Batch

#: The per-slice condition vector: relative position in the gland's z-extent, gland area fraction.
COND_NAMES = ("position", "area")
COND_DIM = len(COND_NAMES)


@dataclass
class SliceSet:
    """Preprocessed 2D slices, in volume order within each patient.

    Attributes:
        images: float32 [N, H, W], intensities scaled to [-1, 1] per volume.
        masks: uint8 [N, H, W] with values in {0, 1}.
        cond: float32 [N, COND_DIM]: relative slice position within the gland's
            z-extent (0 at the first gland slice, 1 at the last; outside that
            range beyond the gland) and gland area fraction of the slice.
        patient: str [N], the patient id of each slice.
        slice_index: int64 [N], the slice's index in its (canonically
            oriented) volume.
        spacing: float32 [N, 3], millimetres per pixel of the preprocessed
            slice (rows, columns) and between slices, so an export writes
            correct headers; ones where unknown.
    """

    images: np.ndarray
    masks: np.ndarray
    cond: np.ndarray
    patient: np.ndarray
    slice_index: np.ndarray
    spacing: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.spacing is None:
            self.spacing = np.ones((n, 3), dtype=np.float32)
        for name in ("masks", "cond", "patient", "slice_index", "spacing"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SliceSet.{name} has {len(getattr(self, name))} rows, images has {n}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def patients(self) -> list[str]:
        """Patient ids in order of first appearance."""
        _, first = np.unique(self.patient, return_index=True)
        return [str(self.patient[i]) for i in sorted(first)]

    def select(self, rows: np.ndarray) -> SliceSet:
        """A subset by row index or boolean mask."""
        return SliceSet(
            self.images[rows],
            self.masks[rows],
            self.cond[rows],
            self.patient[rows],
            self.slice_index[rows],
            self.spacing[rows],
        )

    def of_patients(self, patients: list[str]) -> SliceSet:
        """The slices of the given patients, keeping their order."""
        return self.select(np.isin(self.patient, np.asarray(patients, dtype=str)))

    def identity(self) -> str:
        """A hash of which slices these are (patient and slice index, in order), for cache keys."""
        import hashlib

        digest = hashlib.sha256()
        digest.update("\0".join(self.patient.astype(str)).encode())
        digest.update(np.ascontiguousarray(self.slice_index, dtype=np.int64).tobytes())
        return digest.hexdigest()[:20]

    def has_gland(self) -> np.ndarray:
        """Boolean [N]: the slice's mask has foreground."""
        return self.masks.reshape(len(self), -1).any(axis=1)

    def to_batch(self, rows: np.ndarray | slice | None = None) -> Batch:
        """Tensors [N, 1, H, W] for the given rows (all when None)."""
        rows = slice(None) if rows is None else rows
        return Batch(
            torch.from_numpy(np.ascontiguousarray(self.images[rows]))[:, None].float(),
            torch.from_numpy(np.ascontiguousarray(self.masks[rows]))[:, None].float(),
            torch.from_numpy(np.ascontiguousarray(self.cond[rows])).float(),
        )

    @classmethod
    def from_batch(cls, batch: Batch, patient: str = "synthetic", cond_dim: int = COND_DIM,
                   spacing: np.ndarray | None = None) -> SliceSet:
        """A SliceSet from generated tensors (cond zero-filled when absent; one spacing [3] for every row)."""
        n = len(batch)
        cond = batch.cond if batch.cond is not None else torch.zeros(n, cond_dim)
        return cls(
            batch.image[:, 0].detach().cpu().numpy().astype(np.float32),
            (batch.mask[:, 0].detach().cpu().numpy() > 0.5).astype(np.uint8),
            cond.detach().cpu().numpy().astype(np.float32),
            np.full(n, patient),
            np.arange(n, dtype=np.int64),
            None if spacing is None else np.tile(np.asarray(spacing, np.float32), (n, 1)),
        )

    def median_spacing(self) -> np.ndarray:
        """The typical pixel and slice spacing [3] in mm (what a synthetic set inherits)."""
        return np.median(self.spacing, axis=0).astype(np.float32) if len(self) else np.ones(3, np.float32)

    @classmethod
    def concat(cls, parts: list[SliceSet]) -> SliceSet:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("images", "masks", "cond", "patient", "slice_index", "spacing")))

    def save(self, path) -> None:
        """Write as a compressed .npz."""
        np.savez_compressed(
            path,
            images=self.images,
            masks=self.masks,
            cond=self.cond,
            patient=self.patient.astype(str),
            slice_index=self.slice_index,
            spacing=self.spacing,
        )

    @classmethod
    def load(cls, path) -> SliceSet:
        with np.load(path, allow_pickle=False) as f:
            spacing = f["spacing"] if "spacing" in f.files else None  # sets written before spacing was kept
            return cls(f["images"], f["masks"], f["cond"], f["patient"], f["slice_index"], spacing)
