"""Shared fixtures: tiny synthetic slice sets, an isolated cache, the test-only plugins."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.data.slices import SliceSet
from toolkit.registry import load_plugin_dir
from toolkit.settings import SegSettings

TOY_PLUGINS = Path(__file__).parent / "toy_plugins"
load_plugin_dir(TOY_PLUGINS)
# Your own plugin folders join the contract test: GANSEG_PLUGINS=my_plugins python -m pytest tests/test_contract.py
for _folder in filter(None, os.environ.get("GANSEG_PLUGINS", "").split(os.pathsep)):
    load_plugin_dir(_folder)
torch.set_num_threads(1)

#: A segmenter that trains in well under a second at 32 x 32: for evaluation contexts in tests.
TINY_SEG = SegSettings(steps=12, batch_size=8, base_channels=4, depth=2, val_every=6, precision="fp32", threads=1)


def make_slices(n_patients: int = 4, slices_per_patient: int = 6, size: int = 32, seed: int = 0) -> SliceSet:
    """Noisy ellipse 'glands' brighter than a smooth background, varying per patient and slice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images, masks, cond, patient, index = [], [], [], [], []
    for p in range(n_patients):
        cy, cx = rng.uniform(0.4, 0.6, 2)
        ry, rx = rng.uniform(0.12, 0.22, 2)
        for s in range(slices_per_patient):
            shrink = 1.0 - abs(s - (slices_per_patient - 1) / 2) / slices_per_patient
            inside = ((yy - cy) / (ry * shrink)) ** 2 + ((xx - cx) / (rx * shrink)) ** 2 <= 1
            mask = inside if 0 < s < slices_per_patient - 1 else np.zeros_like(inside)
            image = 0.3 * np.sin(6 * xx + p) + 0.6 * mask + 0.1 * rng.standard_normal((size, size))
            images.append(np.clip(image, -1, 1).astype(np.float32))
            masks.append(mask.astype(np.uint8))
            cond.append([(s - 1) / max(1, slices_per_patient - 3), float(mask.mean())])
            patient.append(f"p{p:02d}")
            index.append(s)
    return SliceSet(np.stack(images), np.stack(masks), np.asarray(cond, np.float32),
                    np.asarray(patient), np.asarray(index, np.int64))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own GANSEG_CACHE, so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_slices() -> SliceSet:
    return make_slices()
