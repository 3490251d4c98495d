"""``export``: a run's synthetic set, optionally with its real training slices, for the segmenters people use.

Formats:
    nifti: ``imagesTr/<case>.nii.gz`` + ``labelsTr/<case>.nii.gz`` + a Medical
        Segmentation Decathlon ``dataset.json`` (what MONAI's
        ``load_decathlon_datalist`` and ganseg's own ``msd`` layout read).
    nnunet: an nnU-Net v2 raw dataset ``DatasetXXX_Name/`` (``imagesTr/<case>_0000.nii.gz``,
        ``labelsTr/<case>.nii.gz``, ``dataset.json`` with ``channel_names``,
        ``labels``, ``numTraining``, ``file_ending``), written into ``--out``
        (point it at ``$nnUNet_raw``).
    png: ``images/<case>.png`` (8-bit, [-1, 1] -> 0..255) + ``masks/<case>.png`` (0 / 255).

Every export also writes ``cases.csv``: per case its source (synthetic or
real), patient, slice index, condition vector and spacing (mm), so a user can
tell synthetic from real cases and PNG users keep the spacing.

How 2D slices become volumes: **one single-slice volume per slice**
(``[X, Y, 1]``), not stacks. Synthetic slices are independent draws with no
through-plane neighbours; stacking them would invent a 3D context that a 3D
network (nnU-Net ``3d_fullres``, a MONAI 3D U-Net) would learn from and that
real anatomy does not have. Single-slice volumes are what nnU-Net's ``2d``
configuration and MONAI 2D pipelines (``LoadImage`` then squeezing the last
axis) expect, real and synthetic cases then have the same form, and every
case carries its own spacing: rows/columns in mm per preprocessed pixel and
the slice thickness (``SliceSet.spacing``; synthetic sets inherit the
training slices' median). The slice is stored in canonical RAS+ voxel order,
so ganseg's readers (``read_volume`` + ``axial_slices``) give back exactly the
exported slice, in radiological view, and viewers show it upright.

Intensities are the toolkit's preprocessed values (per-volume percentile
clip scaled to [-1, 1]) stored as float32, so they round-trip exactly; they
are not scanner units (nnU-Net z-scores non-CT channels anyway). Masks are
uint8 {0, 1}.

``--with-real`` adds the run's real training slices (the same slices the
generator saw and the ``dice_gain`` augmented arm trains on), read through the
run's saved config and split; validation and test patients are never exported.

An export is written into a temporary sibling folder and renamed when
complete; an existing output folder is replaced only with ``force`` and only
when an earlier export wrote it (the ``.ganseg-export`` marker).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import toolkit
from toolkit.data.slices import COND_NAMES, SliceSet
from toolkit.data.volumes import spacing_affine, write_volume
from toolkit.io import atomic_write
from toolkit.rundir import RunDir

FORMATS = ("nifti", "nnunet", "png")
MARKER = ".ganseg-export"
DEFAULT_DATASET_ID = 500  # nnU-Net asks custom datasets to use ids from 500 on (1-10 are the Decathlon's)
CHANNEL = "T2"
LABEL = "prostate"


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says what would be right."""


@dataclass
class ExportSummary:
    """What an export wrote."""

    path: Path
    format: str
    n_synthetic: int
    n_real: int
    real_patients: list[str] = field(default_factory=list)


# Slices <-> single-slice volumes -------------------------------------------------------------


def slice_volume(image: np.ndarray) -> np.ndarray:
    """A radiological-view slice [rows, cols] as a canonical [X, Y, 1] volume (the inverse of ``axial_slices``)."""
    return np.ascontiguousarray(np.asarray(image)[::-1, ::-1].T)[..., None]


def slice_affine(spacing: np.ndarray) -> np.ndarray:
    """The RAS+ affine of a slice with ``spacing`` = (row mm, column mm, slice mm): columns run along X, rows along Y."""
    rows_mm, cols_mm, slice_mm = (float(s) for s in spacing)
    return spacing_affine((cols_mm, rows_mm, slice_mm))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] floats to 0..255 (rounded, clipped)."""
    return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


# Cases ---------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


def case_names(real: SliceSet | None, synthetic: SliceSet) -> list[str]:
    """``real_<patient>_z<slice>`` for real slices, then ``syn_<n>`` for synthetic ones (never ending in _NNNN)."""
    names = [f"real_{_safe(p)}_z{int(z):03d}" for p, z in zip(real.patient, real.slice_index)] if real else []
    width = max(5, len(str(len(synthetic) - 1)))
    names += [f"syn_{i:0{width}d}" for i in range(len(synthetic))]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:3]
        raise ExportError(f"patient ids map to the same case names {dup} after removing unsafe characters; "
                          "rename those patients' files")
    return names


def cases_csv(names: list[str], sources: list[str], slices: SliceSet) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    cond_names = list(COND_NAMES) if slices.cond.shape[1] == len(COND_NAMES) else \
        [f"cond{i}" for i in range(slices.cond.shape[1])]
    writer.writerow(["case", "source", "patient", "slice_index", *cond_names, "row_mm", "col_mm", "slice_mm"])
    for i, name in enumerate(names):
        writer.writerow([name, sources[i], slices.patient[i], int(slices.slice_index[i]),
                         *(f"{v:.6g}" for v in slices.cond[i]), *(f"{v:.6g}" for v in slices.spacing[i])])
    return out.getvalue()


def real_training_slices(run: RunDir, overrides: tuple[str, ...] = ()) -> SliceSet:
    """The run's real training slices, through its saved config and split (never val/test patients)."""
    from toolkit.experiment import load_run_config, prepare_data

    if not run.split.is_file():
        raise ExportError(f"--with-real: {run.path} has no split.json, so its training patients are unknown; "
                          "export a finished run")
    config = load_run_config(run.path, overrides)
    prepared = prepare_data(config, run)
    return prepared.train


# Writers -------------------------------------------------------------------------------------


def _write_nifti_cases(folder: Path, names: list[str], slices: SliceSet, channel_suffix: str) -> None:
    for i, name in enumerate(names):
        affine = slice_affine(slices.spacing[i])
        write_volume(folder / "imagesTr" / f"{name}{channel_suffix}.nii.gz",
                     slice_volume(slices.images[i]).astype(np.float32), affine)
        write_volume(folder / "labelsTr" / f"{name}.nii.gz",
                     slice_volume(slices.masks[i]).astype(np.uint8), affine)


def _description(run: RunDir, n_synthetic: int, n_real: int) -> dict[str, str]:
    what = f"{n_synthetic} synthetic" + (f" + {n_real} real training" if n_real else "")
    return {"description": f"{what} 2D prostate MR slices (single-slice volumes) exported by ganseg from run "
                           f"{run.name}; intensities are preprocessed values in [-1, 1]",
            "reference": f"ganseg {toolkit.__version__}, run {run.path}",
            "release": toolkit.__version__}


def write_nifti(folder: Path, run: RunDir, names: list[str], slices: SliceSet, n_real: int) -> None:
    _write_nifti_cases(folder, names, slices, "")
    meta = {"name": f"ganseg-{run.name}", **_description(run, len(names) - n_real, n_real),
            "licence": "that of the data the run was trained on", "tensorImageSize": "3D",
            "modality": {"0": CHANNEL}, "labels": {"0": "background", "1": LABEL},
            "numTraining": len(names), "numTest": 0,
            "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
            "test": []}
    atomic_write(folder / "dataset.json", json.dumps(meta, indent=2))


def write_nnunet(folder: Path, run: RunDir, names: list[str], slices: SliceSet, n_real: int, name: str) -> None:
    _write_nifti_cases(folder, names, slices, "_0000")
    meta = {"channel_names": {"0": CHANNEL}, "labels": {"background": 0, LABEL: 1},
            "numTraining": len(names), "file_ending": ".nii.gz", "name": name,
            **_description(run, len(names) - n_real, n_real)}
    atomic_write(folder / "dataset.json", json.dumps(meta, indent=2))


def write_png(folder: Path, names: list[str], slices: SliceSet) -> None:
    from PIL import Image  # torchvision's own dependency (save_image uses it too)

    def png(array: np.ndarray):
        return lambda f: Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG")

    for i, name in enumerate(names):
        atomic_write(folder / "images" / f"{name}.png", png(to_uint8(slices.images[i])))
        atomic_write(folder / "masks" / f"{name}.png", png((slices.masks[i] > 0).astype(np.uint8) * 255))


# The export ----------------------------------------------------------------------------------


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ExportError(f"--dataset-id must be 1..999 (nnU-Net ids are three digits; use 500 or more for your "
                          f"own datasets), got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ExportError(f"--dataset-name {name!r}: use letters, digits and underscores only (e.g. GansegVae)")
    return f"Dataset{dataset_id:03d}_{name}"


def default_dataset_name(run: RunDir) -> str:
    return "Ganseg" + "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", run.name) if part)


def target_folder(run: RunDir, fmt: str, out: str | Path | None, dataset_id: int, dataset_name: str | None) -> Path:
    """Where an export goes: ``out`` (default ``<run>/export/<format>``); nnunet: ``out/DatasetXXX_Name``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    base = Path(out) if out is not None else run.path / "export" / fmt
    if fmt != "nnunet":
        return base
    folder = dataset_folder_name(dataset_id, dataset_name or default_dataset_name(run))
    if base.is_dir():
        clash = [p.name for p in base.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder]
        if clash:
            raise ExportError(f"{base} already holds {clash[0]} with dataset id {dataset_id}; nnU-Net refuses two "
                              f"datasets with one id: choose another --dataset-id")
    return base / folder


def check_target(target: Path, force: bool) -> None:
    """Refuse to overwrite: an existing non-empty folder needs ``force`` and must be an earlier export."""
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder; choose another --out")
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise ExportError(f"{target} already exists; use --force to replace it, or another --out")
        if not (target / MARKER).is_file():
            raise ExportError(f"--force: {target} was not written by `ganseg export` (it has no {MARKER} marker), "
                              "so it is not deleted; choose another --out")


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, *, with_real: bool = False,
               force: bool = False, dataset_id: int = DEFAULT_DATASET_ID, dataset_name: str | None = None,
               overrides: tuple[str, ...] = ()) -> ExportSummary:
    """Export a run's synthetic set (and, ``with_real``, its real training slices) in ``fmt``.

    Args:
        run_dir: the run (``runs/<name>``).
        fmt: ``nifti``, ``nnunet`` or ``png``.
        out: the folder to write (nnunet: the folder to write ``DatasetXXX_Name/`` into);
            default ``<run>/export/<fmt>``.
        with_real: add the real training slices (read through the run's config and split).
        force: replace an earlier export at the same place.
        dataset_id, dataset_name: nnunet only: ``DatasetXXX_Name`` (name default: ``Ganseg<RunName>``).
        overrides: ``--set`` changes to the run's config when reading the real data (e.g. a moved data.path).

    Raises:
        ExportError: a bad option or an output that would be overwritten.
        RunError: not a run, or no synthetic set. ConfigError / DataError: the real data cannot be read.
    """
    run = RunDir.existing(run_dir, purpose="export")
    target = target_folder(run, fmt, out, dataset_id, dataset_name)
    check_target(target, force)
    synthetic = run.load_synthetic()
    if len(synthetic) == 0:
        raise ExportError(f"{run.synthetic} holds no slices; nothing to export")
    if np.all(synthetic.spacing == 1):
        warnings.warn(f"{run.synthetic} carries no spacing (written before ganseg kept it): the headers say 1 mm "
                      "per pixel and per slice; re-sample the run to get the training slices' spacing", stacklevel=2)
    real = real_training_slices(run, overrides) if with_real else None
    names = case_names(real, synthetic)
    slices = SliceSet.concat([real, synthetic]) if real is not None else synthetic
    n_real = 0 if real is None else len(real)
    sources = ["real"] * n_real + ["synthetic"] * len(synthetic)

    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if fmt == "nifti":
            write_nifti(tmp, run, names, slices, n_real)
        elif fmt == "nnunet":
            write_nnunet(tmp, run, names, slices, n_real, target.name.split("_", 1)[1])
        else:
            write_png(tmp, names, slices)
        atomic_write(tmp / "cases.csv", cases_csv(names, sources, slices))
        atomic_write(tmp / MARKER, f"written by ganseg export from {run.path}; export --force may replace it\n")
        if target.exists():
            shutil.rmtree(target)  # check_target allowed it: empty, or an earlier export with --force
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    patients = [] if real is None else real.patients()
    return ExportSummary(target, fmt, len(synthetic), n_real, patients)
