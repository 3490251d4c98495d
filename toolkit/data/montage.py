"""A PNG montage of slices with the mask outline, to look at a data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from toolkit.data.slices import SliceSet


def montage(ss: SliceSet, rows: np.ndarray, columns: int = 6, outline: tuple[int, int, int] = (255, 40, 40),
            scale: int = 2) -> np.ndarray:
    """An RGB uint8 grid of the chosen slices (images in [-1, 1]) with mask outlines."""
    tiles = []
    for r in rows:
        g = np.clip((ss.images[r] + 1) / 2, 0, 1)
        rgb = np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)
        m = ss.masks[r].astype(bool)
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = outline
        tiles.append(np.kron(rgb, np.ones((scale, scale, 1), np.uint8)))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    lines = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(lines, axis=0)


def save_montage(ss: SliceSet, path: str | Path, per_patient: int = 3, patients: int = 6, scale: int = 2) -> Path:
    """Write a montage: for each of the first ``patients`` patients, slices near the gland's
    apex, middle and base (``per_patient`` of them), one patient per row."""
    from PIL import Image

    rows = []
    for patient in ss.patients()[:patients]:
        idx = np.flatnonzero(ss.patient == patient)
        gland = idx[ss.has_gland()[idx]]
        pick = gland if len(gland) else idx
        rows.extend(pick[np.linspace(0, len(pick) - 1, per_patient).round().astype(int)])
    grid = montage(ss, np.asarray(rows), columns=per_patient, scale=scale)
    Image.fromarray(grid).save(path)
    return Path(path)
