"""`export`: NIfTI / nnU-Net / PNG exports round-trip through the data readers with identical slices."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from toolkit.config import resolve
from toolkit.data.layouts import find_cases
from toolkit.data.slices import SliceSet
from toolkit.data.volumes import axial_slices, read_volume, spacing_affine, write_volume
from toolkit.experiment import prepare_data
from toolkit.export import export_run, slice_affine, slice_volume, to_uint8
from toolkit.rundir import RunDir
from toolkit.types import Batch

SIZE = 32
VOXEL_MM = (0.5, 0.7, 3.0)  # anisotropic in-plane, so rows and columns cannot be swapped unnoticed


def write_data(folder, n_patients=4):
    """A tiny msd data set: [40, 36, 6] volumes with a box 'gland' in the middle slices."""
    rng = np.random.default_rng(0)
    for i in range(n_patients):
        image = rng.integers(0, 1000, (40, 36, 6)).astype(np.int16)
        mask = np.zeros((40, 36, 6), np.uint8)
        mask[12 + i:26, 10:24 - i, 1:5] = 1
        image[mask > 0] += 800
        write_volume(folder / "imagesTr" / f"pat_{i}.nii.gz", image, spacing_affine(VOXEL_MM))
        write_volume(folder / "labelsTr" / f"pat_{i}.nii.gz", mask, spacing_affine(VOXEL_MM))
    return folder


@pytest.fixture
def run(tmp_path):
    """A finished run as the core leaves it: config, split, a synthetic set with inherited spacing."""
    data = write_data(tmp_path / "data")
    config = resolve(profile="smoke", overrides=[f"data.path={data}", f"data.image_size={SIZE}",
                                                 "split.val_patients=1", "split.test_patients=1",
                                                 "split.n_train_patients=2"])
    run = RunDir.create(tmp_path / "runs", "my-run")
    run.write_config(config.to_yaml())
    prepared = prepare_data(config, run)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(7, 1, SIZE, SIZE, generator=g) * 2 - 1
    masks = (torch.rand(7, 1, SIZE, SIZE, generator=g) > 0.7).float()
    synthetic = SliceSet.from_batch(Batch(images, masks, torch.rand(7, 2, generator=g)),
                                    spacing=prepared.train.median_spacing())
    run.save_synthetic(synthetic)
    return run, prepared, synthetic


def expected_slices(prepared, synthetic, with_real):
    return SliceSet.concat([prepared.train, synthetic]) if with_real else synthetic


def read_cases(folder):
    with open(folder / "cases.csv") as f:
        return list(csv.DictReader(f))


def test_slice_volume_is_the_inverse_of_axial_slices():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)  # rows != cols
    volume = slice_volume(image)
    assert volume.shape == (4, 3, 1)
    np.testing.assert_array_equal(axial_slices(volume)[0], image)
    assert np.allclose(np.diag(slice_affine(np.array([0.7, 0.5, 3.0])))[:3], [0.5, 0.7, 3.0])


@pytest.mark.parametrize("with_real", [False, True])
def test_nifti_export_round_trips_through_the_msd_layout(run, tmp_path, with_real):
    run_dir, prepared, synthetic = run
    summary = export_run(run_dir.path, "nifti", tmp_path / "out", with_real=with_real)
    expected = expected_slices(prepared, synthetic, with_real)
    rows = read_cases(summary.path)
    assert len(rows) == len(expected) == summary.n_synthetic + summary.n_real
    layout, cases = find_cases(summary.path, "auto")
    assert layout == "msd" and len(cases) == len(expected)
    by_name = {c.patient: c for c in cases}
    for i, row in enumerate(rows):
        image, mask = read_volume(by_name[row["case"]].image), read_volume(by_name[row["case"]].mask)
        assert image.array.shape == (SIZE, SIZE, 1) and image.array.dtype == np.float32
        np.testing.assert_array_equal(axial_slices(image.array)[0], expected.images[i])  # float32: exact
        np.testing.assert_array_equal(axial_slices(mask.array)[0], expected.masks[i])
        row_mm, col_mm, slice_mm = expected.spacing[i]
        assert np.allclose(image.spacing, (col_mm, row_mm, slice_mm)) and np.allclose(mask.spacing, image.spacing)
    # Synthetic slices carry the training slices' spacing; real ones their own, which is not isotropic here.
    assert np.allclose(expected.spacing[-1], prepared.train.median_spacing())
    assert not np.isclose(expected.spacing[0][0], expected.spacing[0][1])
    meta = json.loads((summary.path / "dataset.json").read_text())
    assert meta["numTraining"] == len(expected) and meta["labels"] == {"0": "background", "1": "prostate"}
    if with_real:
        exported = {r["patient"] for r in rows if r["source"] == "real"}
        assert exported == set(prepared.split["train"])
        assert not exported & (set(prepared.split["val"]) | set(prepared.split["test"]))
        assert summary.real_patients == prepared.split["train"]


def check_nnunet_dataset(folder):
    """nnU-Net v2's raw-dataset rules (verify_dataset_integrity's checks, for when nnunetv2 is not installed)."""
    meta = json.loads((folder / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(meta)
    assert meta["channel_names"] == {"0": "T2"} and meta["labels"] == {"background": 0, "prostate": 1}
    assert meta["file_ending"] == ".nii.gz"
    assert folder.name.startswith("Dataset") and folder.name[7:10].isdigit() and folder.name[10] == "_"
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert len(labels) == meta["numTraining"] and all(n.endswith("_0000.nii.gz") for n in images)
    assert [n[: -len("_0000.nii.gz")] for n in images] == [n[: -len(".nii.gz")] for n in labels]
    for name in labels:
        image = read_volume(folder / "imagesTr" / name.replace(".nii.gz", "_0000.nii.gz"))
        label = read_volume(folder / "labelsTr" / name)
        assert image.array.shape == label.array.shape and np.allclose(image.affine, label.affine)
        assert set(np.unique(label.array).tolist()) <= {0, 1} and np.isfinite(image.array).all()
    return meta


def test_nnunet_export_is_a_valid_raw_dataset(run, tmp_path):
    run_dir, prepared, synthetic = run
    summary = export_run(run_dir.path, "nnunet", tmp_path / "nnUNet_raw", with_real=True, dataset_id=512)
    assert summary.path == tmp_path / "nnUNet_raw" / "Dataset512_GansegMyRun"
    meta = check_nnunet_dataset(summary.path)
    assert meta["numTraining"] == len(prepared.train) + len(synthetic)
    # The msd reader takes nnU-Net's channel files too, with identical slices.
    _, cases = find_cases(summary.path, "msd")
    first = min(cases, key=lambda c: c.patient)
    np.testing.assert_array_equal(axial_slices(read_volume(first.image).array)[0], prepared.train.images[0])


def test_nnunet_export_passes_nnunets_own_check(run, tmp_path):
    verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    summary = export_run(run[0].path, "nnunet", tmp_path / "raw", with_real=True)
    verify.verify_dataset_integrity(str(summary.path), num_processes=1)


def test_png_export_holds_8bit_images_and_0_255_masks(run, tmp_path):
    from PIL import Image

    run_dir, _, synthetic = run
    summary = export_run(run_dir.path, "png", tmp_path / "png")
    rows = read_cases(summary.path)
    assert len(rows) == len(synthetic) and {r["source"] for r in rows} == {"synthetic"}
    for i, row in enumerate(rows):
        image = np.asarray(Image.open(summary.path / "images" / f"{row['case']}.png"))
        mask = np.asarray(Image.open(summary.path / "masks" / f"{row['case']}.png"))
        np.testing.assert_array_equal(image, to_uint8(synthetic.images[i]))
        np.testing.assert_array_equal(mask, synthetic.masks[i] * 255)
        assert abs(image.astype(float) / 127.5 - 1 - synthetic.images[i]).max() <= 0.5 / 127.5 + 1e-6
    assert float(rows[0]["slice_mm"]) == pytest.approx(float(synthetic.spacing[0][2]))


def test_cli_export_never_overwrites_without_force(run, tmp_path):
    run_dir = run[0]
    cli = CliRunner()
    out = tmp_path / "exp"
    args = ["export", "--run", str(run_dir.path), "--format", "nifti", "--out", str(out)]
    first = cli.invoke(main, args)
    assert first.exit_code == 0 and "wrote 7 synthetic" in first.output, first.output
    again = cli.invoke(main, args)
    assert again.exit_code != 0 and "already exists" in again.output and "--force" in again.output
    forced = cli.invoke(main, [*args, "--force", "--with-real"])
    assert forced.exit_code == 0 and "real training slices" in forced.output, forced.output
    # --force never deletes a folder an export did not write.
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("months of work")
    refused = cli.invoke(main, [*args[:-1], str(mine), "--force"])
    assert refused.exit_code != 0 and ".ganseg-export" in refused.output and (mine / "chapter1.tex").exists()
    # Default folder: inside the run.
    default = cli.invoke(main, ["export", "--run", str(run_dir.path), "--format", "png"])
    assert default.exit_code == 0 and (run_dir.path / "export" / "png" / "cases.csv").is_file()


def test_cli_export_nnunet_options_are_checked(run, tmp_path):
    run_dir = run[0]
    cli = CliRunner()
    base = ["export", "--run", str(run_dir.path), "--format", "nnunet", "--out", str(tmp_path / "raw")]
    ok = cli.invoke(main, [*base, "--dataset-name", "Prostate_Syn"])
    assert ok.exit_code == 0 and "nnUNetv2_plan_and_preprocess -d 500" in ok.output, ok.output
    clash = cli.invoke(main, [*base, "--dataset-name", "Other"])
    assert clash.exit_code != 0 and "Dataset500_Prostate_Syn" in clash.output and "--dataset-id" in clash.output
    bad = cli.invoke(main, [*base, "--dataset-name", "no spaces"])
    assert bad.exit_code != 0 and "letters, digits and underscores" in bad.output
    not_a_run = cli.invoke(main, ["export", "--run", str(tmp_path), "--format", "png"])
    assert not_a_run.exit_code != 0 and "not a run directory" in not_a_run.output
