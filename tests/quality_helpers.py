"""Tiny procedural slices and an EvalContext for the quality-metric tests (no real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toolkit.data.slices import SliceSet
from toolkit.plugin import EvalContext


def blob_images(n: int, size: int = 32, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Bright ellipses of random centre and radii on a dark background, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        ry, rx = rng.uniform(0.1, 0.3, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img = np.where(inside, 0.6, -0.6) + rng.normal(0, noise, (size, size))
        out[i] = np.clip(img, -1, 1)
    return out


def slice_set(images: np.ndarray, patients_per: int = 8, name: str = "p") -> SliceSet:
    n = len(images)
    return SliceSet(
        images.astype(np.float32),
        (images > 0).astype(np.uint8),
        np.zeros((n, 2), np.float32),
        np.array([f"{name}{i // patients_per}" for i in range(n)]),
        np.arange(n, dtype=np.int64),
    )


def make_ctx(tmp_path: Path, synthetic: np.ndarray, n_real: int = 48, size: int = 32,
             writer=None) -> EvalContext:
    train = slice_set(blob_images(n_real, size, seed=1), name="train")
    val = slice_set(blob_images(n_real // 2, size, seed=2), name="val")
    test = slice_set(blob_images(n_real // 2, size, seed=3), name="test")
    return EvalContext(
        train=train, val=val, test=test, synthetic=slice_set(synthetic, name="synthetic"),
        device=torch.device("cpu"), run_dir=tmp_path / "run", cache_dir=tmp_path / "cache",
        data_fingerprint="blobs-v1", seed=0, writer=writer,
    )
