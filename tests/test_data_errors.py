"""Every bad-input case gets a DataError naming the file and what would be right."""

from __future__ import annotations

import builtins
import json

import nibabel as nib
import numpy as np
import pytest

from toolkit.data import DataError, load_dataset, split_patients
from toolkit.data.inspect import format_inspection, inspect_dataset
from toolkit.schema import ConfigError
from toolkit.settings import DataSettings, SplitSettings

CFG = {"path": None, "layout": "auto", "image_size": 32, "crop_fraction": 1.0, "percentiles": [0.5, 99.5],
       "msd_channel": 0, "image_name": None, "mask_name": None, "empty_mask": "error", "cache": False}


def volume(shape=(16, 16, 6), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 1000, shape).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    mask[5:10, 5:10, 2:4] = 1
    return img, mask


def write_case(root, pid, img, mask, img_affine=None, mask_affine=None):
    d = root / pid
    d.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, np.eye(4) if img_affine is None else img_affine), str(d / "t2.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4) if mask_affine is None else mask_affine),
             str(d / "t2_anatomy_reader1.nii.gz"))
    return d


def load(root, **kw):
    return load_dataset(DataSettings(**{**CFG, "path": str(root), **kw}))


def test_a_good_case_loads(tmp_path):
    write_case(tmp_path, "p1", *volume())
    ss, _ = load(tmp_path)
    assert len(ss) == 6


def test_unreadable_and_truncated_files(tmp_path):
    d = write_case(tmp_path, "p1", *volume())
    (d / "t2.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(DataError, match=r"p1/t2.nii.gz.*unreadable or truncated"):
        load(tmp_path)
    write_case(tmp_path, "p1", *volume(shape=(64, 64, 12)))
    raw = (d / "t2.nii.gz").read_bytes()
    (d / "t2.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"p1/t2.nii.gz.*unreadable or truncated"):
        load(tmp_path)


def test_truncated_mhd(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    img, mask = volume()
    for name, arr in (("Case00.mhd", img), ("Case00_segmentation.mhd", mask)):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name))
    raw = tmp_path / "Case00.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(DataError, match=r"Case00.mhd.*unreadable or truncated"):
        load(tmp_path)


def test_shape_and_affine_mismatch(tmp_path):
    img, mask = volume()
    write_case(tmp_path, "p1", img, mask[:, :, :5])
    with pytest.raises(DataError, match=r"t2_anatomy_reader1.nii.gz: mask shape \(16, 16, 5\) differs"):
        load(tmp_path)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    write_case(tmp_path, "p1", img, mask, mask_affine=shifted)
    # The first line alone says what is wrong, with both files, and what to do.
    with pytest.raises(DataError, match=r"t2_anatomy_reader1.nii.gz: mask geometry \(voxel-to-world affine\) "
                                        r"differs from the image's \(.*t2.nii.gz\); resample the mask"):
        load(tmp_path)


def test_empty_mask_error_or_skip(tmp_path):
    write_case(tmp_path, "p1", *volume())
    img, mask = volume(seed=1)
    write_case(tmp_path, "p2", img, np.zeros_like(mask))
    with pytest.raises(DataError, match=r"p2/t2_anatomy_reader1.nii.gz: mask has no foreground.*empty_mask: skip"):
        load(tmp_path)
    with pytest.warns(UserWarning, match="p2") as caught:
        ss, _ = load(tmp_path, empty_mask="skip")
    assert ss.patients() == ["p1"]
    message = str(caught[0].message)  # says what was done, not to set the option the user already set
    assert "skipped (data.empty_mask: skip)" in message and "set data.empty_mask" not in message
    with pytest.raises(ConfigError, match="data.empty_mask' .*must be one of error, skip"):
        load(tmp_path, empty_mask="ignore")


def test_non_integer_and_unexpected_labels(tmp_path):
    img, mask = volume()
    write_case(tmp_path, "p1", img, mask.astype(np.float32) * 0.5)
    with pytest.raises(DataError, match=r"t2_anatomy_reader1.nii.gz: mask has non-integer values \(e.g. 0.5\)"):
        load(tmp_path)
    write_case(tmp_path, "p1", img, img)  # an image saved as the mask
    with pytest.raises(DataError, match=r"unexpected mask values 0, 2, 3, .* \(770 distinct\).*Is this an image"):
        load(tmp_path)
    neg = mask.astype(np.int16)
    neg[0, 0, 0] = -1
    write_case(tmp_path, "p1", img, neg)
    with pytest.raises(DataError, match=r"unexpected mask values -1, 0, 1"):
        load(tmp_path)


def test_labels_not_in_dataset_json(tmp_path):
    img, mask = volume()
    mask[0, 0, 0] = 7
    for sub, arr in (("imagesTr", img), ("labelsTr", mask)):
        (tmp_path / sub).mkdir()
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / sub / "prostate_00.nii.gz"))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "PZ", "2": "TZ"}}))
    with pytest.raises(DataError, match=r"prostate_00.nii.gz: mask values 0, 1, 7 include labels not declared"):
        load(tmp_path)


def test_nan_intensities(tmp_path):
    img, mask = volume()
    img = img.astype(np.float32)
    img[3, 3, 3] = np.nan
    write_case(tmp_path, "p1", img, mask)
    with pytest.raises(DataError, match=r"p1/t2.nii.gz: 1 voxels are NaN or inf"):
        load(tmp_path)


def test_images_without_masks(tmp_path):
    d = write_case(tmp_path / "folders", "p1", *volume())
    (d / "t2_anatomy_reader1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"p1/t2.nii.gz: image has no mask; expected .*t2_anatomy_reader1.nii.gz"):
        load(tmp_path / "folders")
    msd = tmp_path / "msd"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(volume()[0], np.eye(4)), str(msd / "imagesTr" / "prostate_03.nii.gz"))
    with pytest.raises(DataError, match=r"prostate_03.nii.gz: image has no mask; expected .*labelsTr/prostate_03"):
        load(msd)


def test_no_layout_and_bad_layout_names(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no known data layout found.*msd.*promise12.*folders.*pairs"):
        load(tmp_path)
    with pytest.raises(ConfigError, match="data.layout' .*must be one of auto, msd.*got 'nifti'"):
        load(tmp_path, layout="nifti")
    with pytest.raises(DataError, match="data folder not found"):
        load(tmp_path / "missing")
    d = tmp_path / "case1"
    d.mkdir()
    img, _ = volume()
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(d / "scan.nii.gz"))
    with pytest.raises(DataError, match=r"case1: patient folder has no image named .*set data.image_name"):
        load(tmp_path, layout="folders")


def test_missing_simpleitk_names_the_install_command(tmp_path, monkeypatch):
    (tmp_path / "Case00.mhd").write_text("ObjectType = Image\n")
    (tmp_path / "Case00_segmentation.mhd").write_text("ObjectType = Image\n")
    real_import = builtins.__import__

    def no_sitk(name, *args, **kwargs):
        if name == "SimpleITK":
            raise ImportError("No module named 'SimpleITK'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sitk)
    with pytest.raises(DataError, match=r"pip install ganseg\[mhd\]"):
        load(tmp_path)


def test_bad_settings(tmp_path):
    write_case(tmp_path, "p1", *volume())
    # Settings are checked when they are built, before any file is read.
    with pytest.raises(ConfigError, match="data.image_size' .*one of 32, 64, 128, 256.*got 100"):
        load(tmp_path, image_size=100)
    with pytest.raises(ConfigError, match="data.crop_fraction' .*<= 1.*got 1.5"):
        load(tmp_path, crop_fraction=1.5)
    with pytest.raises(ConfigError, match="percentiles' must be two numbers"):
        load(tmp_path, percentiles=[99, 1])


def test_too_few_patients_for_the_split():
    with pytest.raises(DataError, match=r"split needs 13 patients .*but the data has 10"):
        split_patients([f"p{i}" for i in range(10)], SplitSettings(**{"seed": 0, "val_patients": 4, "test_patients": 8,
                                                      "n_train_patients": 1}))
    with pytest.raises(DataError, match=r"data has 12"):
        split_patients([f"p{i}" for i in range(12)], SplitSettings(**{"seed": 0, "val_patients": 4, "test_patients": 8,
                                                      "n_train_patients": None}))
    with pytest.raises(ConfigError, match="split.n_train_patients' .*>= 1.*got -1"):
        split_patients(["a", "b", "c"], SplitSettings(**{"val_patients": 1, "test_patients": 1, "n_train_patients": -1}))


def test_inspect_names_bad_files(tmp_path):
    img, mask = volume()
    write_case(tmp_path, "p1", img, mask[:, :, :5])
    with pytest.raises(DataError, match="mask shape"):
        inspect_dataset(tmp_path)


def test_multi_label_masks_are_reported_and_mapped_explicitly(tmp_path):
    img, mask = volume()
    zonal = mask.astype(np.int16)
    zonal[mask > 0] = 1
    zonal[4:8, 4:8, 2:4] = 2  # a second zone inside the gland
    zonal[0, 0, 0] = 7  # and a stray label
    write_case(tmp_path, "p1", img, zonal)
    report: dict = {}
    with pytest.warns(UserWarning, match=r"labels \[1, 2, 7\].*all of them count as gland.*data.labels"):
        merged, _ = load_dataset(DataSettings(**{**CFG, "path": str(tmp_path)}), report=report)
    assert report["labels"] == {"setting": "nonzero", "found": [1, 2, 7], "gland": [1, 2, 7]}
    chosen, _ = load(tmp_path, labels=[1, 2])
    assert chosen.masks.sum() < merged.masks.sum()  # label 7 is background now
    with pytest.raises(DataError, match=r"mask labels \[1, 2, 7\] but data.labels: binary"):
        load(tmp_path, labels="binary")
    with pytest.raises(ConfigError, match="data.labels"):
        load(tmp_path, labels="zones")


def test_inspect_names_the_patients_and_files_behind_each_finding(tmp_path):
    img, mask = volume()
    for i in range(6):
        write_case(tmp_path, f"p{i}", img, mask)
    odd_labels = mask.astype(np.int16)
    odd_labels[6:8, 6:8, 2] = 2
    odd_labels[0, 0, 0] = 7
    write_case(tmp_path, "p_labels", img, odd_labels)
    for pid in ("p_empty_a", "p_empty_b", "p_empty_c", "p_empty_d"):
        write_case(tmp_path, pid, img, np.zeros_like(mask))
    coarse = np.diag([2.0, 2.0, 3.0, 1.0])
    write_case(tmp_path, "p_spacing", img, mask, coarse, coarse)
    flipped = np.diag([-1.0, -1.0, 1.0, 1.0])  # stored LPS: the loader reorients it
    write_case(tmp_path, "p_lps", img, mask, flipped, flipped)

    info = inspect_dataset(tmp_path)
    empty, labels = info["problems"]
    assert "4 patient(s) with an empty mask: p_empty_a (" in empty and "and 1 more" in empty
    assert str(tmp_path / "p_empty_a" / "t2_anatomy_reader1.nii.gz") in empty
    assert "label 2 in p_labels (" in labels and "label 7 in p_labels (" in labels
    assert "label 1 in p0 (" in labels and "more" in labels  # the common label: a few named, the rest counted
    spacing, orientation, placeholder = info["warnings"]
    assert "1 of 13 volume(s) differ from the usual voxel spacing (mm) 1 x 1 x 1: 2 x 2 x 3 in p_spacing (" in spacing
    assert "stored orientation RAS: LPS in p_lps (" in orientation
    assert str(tmp_path / "p_lps" / "t2.nii.gz") in orientation
    assert "12 of 13 volume(s) say 1 x 1 x 1 mm" in placeholder
    text = format_inspection(info)
    assert "WARNING: 1 of 13 volume(s) differ" in text and "PROBLEM: 4 patient(s) with an empty mask" in text


def test_inspect_of_a_clean_folder_warns_of_nothing(tmp_path):
    img, mask = volume()
    affine = np.diag([0.6, 0.6, 3.0, 1.0])
    for i in range(3):
        write_case(tmp_path, f"p{i}", img, mask, affine, affine)
    info = inspect_dataset(tmp_path)
    assert info["problems"] == [] and info["warnings"] == []
