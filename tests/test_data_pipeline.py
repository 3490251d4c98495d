"""Loading the phantom in every layout, normalisation, masks, orientation, conditions."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from toolkit.data import load_dataset, select_slices
from toolkit.data.inspect import format_inspection, inspect_dataset
from toolkit.data.phantom import write_phantom
from toolkit.data.volumes import axial_slices, read_volume
from toolkit.settings import DataSettings

N_PATIENTS = 3
CFG = {"path": None, "layout": "auto", "image_size": 32, "crop_fraction": 1.0, "percentiles": [0.5, 99.5],
       "slices": "gland", "slice_margin": 2, "empty_fraction": 0.1, "msd_channel": 0, "image_name": None,
       "mask_name": None, "empty_mask": "error", "cache": False, "phantom_patients": N_PATIENTS, "phantom_seed": 0}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_phantom(tmp_path_factory.mktemp("ph") / "msd", n_patients=N_PATIENTS, seed=3)


def cfg(**kw) -> DataSettings:
    return DataSettings(**{**CFG, **kw})


def to_folders(msd: Path, out: Path, image_name: str, mask_name: str, convert=None) -> Path:
    for img in sorted((msd / "imagesTr").glob("*.nii.gz")):
        d = out / img.name.replace(".nii.gz", "")
        d.mkdir(parents=True)
        for src, name in ((img, image_name), (msd / "labelsTr" / img.name, mask_name)):
            (convert or shutil.copy)(src, d / name)
    return out


def to_mhd(src: Path, dst: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    sitk.WriteImage(sitk.ReadImage(str(src)), str(dst), useCompression=True)


def assert_same(a, b) -> None:
    assert list(a.patient) == list(b.patient)
    np.testing.assert_array_equal(a.slice_index, b.slice_index)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_allclose(a.images, b.images, atol=1e-5)
    np.testing.assert_allclose(a.cond, b.cond, atol=1e-6)


def test_phantom_is_deterministic_and_msd(tmp_path, phantom):
    again = write_phantom(tmp_path / "again", n_patients=1, seed=3)
    name = "prostate_00.nii.gz"
    a = np.asanyarray(nib.load(phantom / "imagesTr" / name).dataobj)
    b = np.asanyarray(nib.load(again / "imagesTr" / name).dataobj)
    np.testing.assert_array_equal(a, b)
    other = write_phantom(tmp_path / "other", n_patients=1, seed=4)
    assert not np.array_equal(a, np.asanyarray(nib.load(other / "imagesTr" / name).dataobj))
    assert a.shape == (128, 128, 24) and a.dtype == np.int16
    mask = np.asanyarray(nib.load(phantom / "labelsTr" / name).dataobj)
    assert set(np.unique(mask)) == {0, 1}
    assert 0.003 < mask.mean() < 0.05  # a few percent of the field of view, like real scans
    zooms = nib.load(phantom / "imagesTr" / name).header.get_zooms()
    assert zooms[2] / zooms[0] > 2  # anisotropic voxels


def test_every_layout_yields_the_same_slices(tmp_path, phantom):
    ref, fp = load_dataset(cfg(path=str(phantom)))
    assert len(ref) == N_PATIENTS * 24 and len(fp) == 16
    folders = to_folders(phantom, tmp_path / "folders", "t2.nii.gz", "t2_anatomy_reader1.nii.gz")
    assert_same(ref, load_dataset(cfg(path=str(folders)))[0])
    named = to_folders(phantom, tmp_path / "named", "img.nii.gz", "seg.nii.gz")
    assert_same(ref, load_dataset(cfg(path=str(named), layout="folders", image_name="img.nii.gz",
                                      mask_name="seg.nii.gz"))[0])
    # pairs: a CSV manifest with relative paths and patient ids.
    manifest = tmp_path / "pairs.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask", "patient"])
        for img in sorted((phantom / "imagesTr").glob("*.nii.gz")):
            pid = img.name.replace(".nii.gz", "")
            w.writerow([str(img), str(phantom / "labelsTr" / img.name), pid])
    assert_same(ref, load_dataset(cfg(path=str(manifest)))[0])
    # MetaImage through SimpleITK: promise12 names and the older course's folders.
    p12 = tmp_path / "promise12"
    p12.mkdir()
    for img in sorted((phantom / "imagesTr").glob("*.nii.gz")):
        pid = img.name.replace(".nii.gz", "")
        to_mhd(img, p12 / f"{pid}.mhd")
        to_mhd(phantom / "labelsTr" / img.name, p12 / f"{pid}_segmentation.mhd")
    assert_same(ref, load_dataset(cfg(path=str(p12)))[0])
    course = to_folders(phantom, tmp_path / "course", "mr_bffe.mhd", "prostaat.mhd", convert=to_mhd)
    assert_same(ref, load_dataset(cfg(path=str(course)))[0])


def test_normalisation_masks_and_conditions(phantom):
    ss, _ = load_dataset(cfg(path=str(phantom)))
    assert ss.images.dtype == np.float32 and ss.images.shape[1:] == (32, 32)
    assert ss.images.min() >= -1 and ss.images.max() <= 1
    assert ss.images.min() < -0.95 and ss.images.max() > 0.95  # the range is used, not squeezed
    assert ss.masks.dtype == np.uint8 and set(np.unique(ss.masks)) == {0, 1}
    for patient in ss.patients():
        rows = ss.patient == patient
        np.testing.assert_array_equal(ss.slice_index[rows], np.arange(24))
        has = ss.has_gland()[rows]
        rel, area = ss.cond[rows, 0], ss.cond[rows, 1]
        assert rel[has].min() == pytest.approx(0) and rel[has].max() == pytest.approx(1)
        assert np.all(np.diff(rel) > 0)
        np.testing.assert_allclose(area, ss.masks[rows].mean(axis=(1, 2)), atol=1e-6)


@pytest.mark.parametrize("size", [64, 128])
def test_image_sizes_and_crop(phantom, size):
    full, _ = load_dataset(cfg(path=str(phantom), image_size=size))
    crop, _ = load_dataset(cfg(path=str(phantom), image_size=size, crop_fraction=0.5))
    assert full.images.shape[1:] == (size, size) == crop.images.shape[1:]
    # Cropping the field of view to half its side makes the gland about 4x larger in area.
    ratio = crop.masks.mean() / full.masks.mean()
    assert 3.0 < ratio < 5.0


def test_orientation_radiological_on_the_phantom(tmp_path, phantom):
    """Bladder above (anterior to) the gland, rectum below it: anterior is the top of the image.

    The phantom records its organ centres in world mm; markers put there in a
    volume with the image's own affine go through the same reader."""
    meta = json.loads((phantom / "dataset.json").read_text())
    for entry in meta["training"]:
        img = nib.load(phantom / entry["image"])
        inv = np.linalg.inv(img.affine)
        marker = np.zeros(img.shape, np.uint8)
        for value, organ in enumerate(("bladder", "prostate", "rectum"), start=1):
            ijk = np.round(inv @ np.r_[entry["landmarks_ras_mm"][organ], 1.0])[:3].astype(int)
            ijk = np.clip(ijk, 0, np.array(img.shape) - 1)
            marker[ijk[0], ijk[1], ijk[2]] = value
        nib.save(nib.Nifti1Image(marker, img.affine), str(tmp_path / "marker.nii.gz"))
        slices = axial_slices(read_volume(tmp_path / "marker.nii.gz").array)
        row = {v: np.argwhere(slices == v)[0][1] for v in (1, 2, 3)}
        assert row[1] < row[2] < row[3], entry["image"]


def test_orientation_marker_left_anterior(tmp_path):
    """A marker at the patient's left-anterior lands top-right, from NIfTI in any voxel order and from MHD."""
    ras = np.zeros((10, 12, 4), np.int16)
    ras[0:2, 10:12, :] = 100  # x low = patient's left in RAS+, y high = anterior
    ras[5, 6, :] = 1  # keep percentiles sane
    for name, data, affine in (
        ("ras.nii.gz", ras, np.diag([1.0, 1, 3, 1])),
        ("lps.nii.gz", ras[::-1, ::-1].copy(), np.diag([-1.0, -1, 3, 1])),
    ):
        nib.save(nib.Nifti1Image(data, affine), str(tmp_path / name))
        sl = axial_slices(read_volume(tmp_path / name).array)[0]
        rows, cols = np.nonzero(sl == 100)
        assert rows.max() < 6 and cols.min() > 5, name  # top rows, right columns
        to_mhd(tmp_path / name, tmp_path / name.replace(".nii.gz", ".mhd"))
        sl = axial_slices(read_volume(tmp_path / name.replace(".nii.gz", ".mhd")).array)[0]
        rows, cols = np.nonzero(sl == 100)
        assert rows.max() < 6 and cols.min() > 5, name + " via mhd"


def test_select_slices(phantom):
    ss, _ = load_dataset(cfg(path=str(phantom)))
    assert select_slices(ss, cfg(slices="all"), 0) is ss
    sel = select_slices(ss, cfg(slices="gland", slice_margin=2, empty_fraction=0.2), seed=0)
    has = sel.has_gland()
    assert has.sum() == ss.has_gland().sum()  # every gland slice is kept
    assert (~has).sum() <= 0.2 * len(sel) + 1e-9
    assert (~has).sum() > 0
    for patient in ss.patients():
        rows = ss.patient == patient
        z = ss.slice_index[rows][ss.has_gland()[rows]]
        kept = sel.slice_index[sel.patient == patient]
        assert kept.min() >= z.min() - 2 and kept.max() <= z.max() + 2
    none = select_slices(ss, cfg(slices="gland", empty_fraction=0.0), seed=0)
    assert none.has_gland().all()
    a = select_slices(ss, cfg(empty_fraction=0.2), seed=1)
    b = select_slices(ss, cfg(empty_fraction=0.2), seed=1)
    np.testing.assert_array_equal(a.slice_index, b.slice_index)


def test_inspect_reports_the_phantom(phantom):
    info = inspect_dataset(phantom)
    assert info["layout"] == "msd" and info["patients"] == N_PATIENTS
    assert info["slices"] == N_PATIENTS * 24 and info["label_values"] == [0, 1]
    assert info["shapes"] == {"128x128x24": N_PATIENTS}
    assert 0 < info["foreground_fraction"] < 0.05
    text = format_inspection(info)
    for word in ("msd", "patients:    3", "128x128x24", "3.6", "[0, 1]", "gland"):
        assert word in text


def test_gland_is_not_an_intensity_window(phantom):
    """The phantom is not circles on a background: no intensity window segments the gland
    (real PROMISE12 slices score about 0.08 on this, the phantom about the same)."""
    ss, _ = load_dataset(cfg(path=str(phantom)))
    gland = ss.masks > 0
    best = 0.0
    for lo in np.linspace(-1, 1, 17):
        for hi in np.linspace(lo, 1, 17)[1:]:
            pred = (ss.images > lo) & (ss.images < hi)
            best = max(best, 2 * (pred & gland).sum() / (pred.sum() + gland.sum()))
    assert best < 0.3


def test_slices_keep_their_spacing_and_write_volume_round_trips(phantom, tmp_path):
    from toolkit.data.phantom import SHAPE, SLICE_MM
    from toolkit.data.volumes import spacing_affine, write_volume

    ss, _ = load_dataset(cfg(path=str(phantom)))
    assert ss.spacing.shape == (len(ss), 3)
    pixel = read_volume(phantom / "imagesTr" / f"{ss.patient[0]}.nii.gz").spacing[0]
    # 128 phantom pixels resized to 32: four times the phantom's pixel size, and the slice distance kept.
    np.testing.assert_allclose(ss.spacing[0], [pixel * SHAPE[0] / 32, pixel * SHAPE[1] / 32, SLICE_MM], rtol=1e-5)
    sub = ss.select(np.arange(5))
    assert np.array_equal(sub.spacing, ss.spacing[:5])
    sub.save(tmp_path / "s.npz")
    assert np.array_equal(type(ss).load(tmp_path / "s.npz").spacing, sub.spacing)
    # write_volume is read_volume's counterpart: same voxels, spacing in the header.
    volume = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    path = write_volume(tmp_path / "v.nii.gz", volume, spacing_affine((0.5, 0.7, 3.0)))
    back = read_volume(path)
    assert np.array_equal(back.array, volume) and np.allclose(back.spacing, (0.5, 0.7, 3.0))


def test_gland_extent_gives_share_and_the_crop_that_keeps_the_gland():
    from toolkit.data.inspect import gland_extent

    gland = np.zeros((40, 40, 5), dtype=bool)
    gland[15:25, 15:25, 1:4] = True  # a 10 x 10 gland around the centre of a 40 x 40 slice, 1 mm pixels
    share, needed = gland_extent(gland, (1.0, 1.0, 3.0))
    assert share == pytest.approx(100 / 1600)
    assert needed == pytest.approx(10 / 40)  # reaches 5 mm from the centre each way: a 10 mm crop of a 40 mm side
    off = np.zeros((40, 40, 5), dtype=bool)
    off[0:4, 18:22, 2] = True  # at the edge: only the whole field of view keeps it
    assert gland_extent(off, (1.0, 1.0, 3.0))[1] == pytest.approx(1.0)
