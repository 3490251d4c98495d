"""Checks on the real PROMISE12 development scans; skipped unless GANSEG_REALDATA names them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from toolkit.data import load_dataset
from toolkit.data.inspect import inspect_dataset
from toolkit.settings import DataSettings

pytestmark = pytest.mark.realdata
ROOT = os.environ.get("GANSEG_REALDATA")
CFG = {"path": None, "layout": "auto", "image_size": 64, "crop_fraction": 0.7, "percentiles": [0.5, 99.5],
       "msd_channel": 0, "image_name": None, "mask_name": None, "empty_mask": "error", "cache": False}


@pytest.fixture(scope="module")
def root() -> Path:
    if not ROOT or not Path(ROOT).is_dir():
        pytest.skip("set GANSEG_REALDATA to the promise12-dev folder to run real-data checks")
    return Path(ROOT)


def test_both_real_layouts_give_the_same_slices(root):
    pytest.importorskip("SimpleITK")
    nifti, _ = load_dataset(DataSettings(**dict(CFG, path=str(root / "nifti"))))
    mhd, _ = load_dataset(DataSettings(**dict(CFG, path=str(root / "mhd"))))
    assert len(nifti) == len(mhd) > 0
    np.testing.assert_array_equal(nifti.masks, mhd.masks)
    np.testing.assert_allclose(nifti.images, mhd.images, atol=1e-5)
    assert set(np.unique(nifti.masks)) == {0, 1}


def test_inspect_reports_the_real_scans(root):
    info = inspect_dataset(root / "nifti")
    assert info["layout"] == "folders" and info["patients"] == 12
    assert info["label_values"] == [0, 1] and 0.005 < info["foreground_fraction"] < 0.1
