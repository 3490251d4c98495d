"""Finding (patient, image file, mask file) cases in the supported folder layouts.

Layouts:
    msd: Medical Segmentation Decathlon (``imagesTr/``, ``labelsTr/``, ``dataset.json``).
    folders: one folder per patient with an image and a mask file.
    promise12: ``CaseNN.mhd`` + ``CaseNN_segmentation.mhd`` side by side.
    pairs: a CSV manifest with ``image,mask[,patient]`` columns.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.data.errors import DataError
from toolkit.data.volumes import NIFTI_SUFFIXES, VOLUME_SUFFIXES, is_volume_file

LAYOUTS = ("msd", "folders", "promise12", "pairs")
#: (image, mask) file names the ``folders`` layout tries when none are configured:
#: prostate158 (zonal labels, binarised) and the older course layout.
FOLDER_DEFAULTS = (("t2.nii.gz", "t2_anatomy_reader1.nii.gz"), ("mr_bffe.mhd", "prostaat.mhd"))


@dataclass
class Case:
    """One patient's image and mask files."""

    patient: str
    image: Path
    mask: Path
    allowed_labels: set[int] | None = field(default=None)  # from dataset.json where known


def _visible(paths) -> list[Path]:
    # The MSD tarballs carry macOS "._name" resource files next to the volumes.
    return sorted(p for p in paths if not p.name.startswith("."))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def detect_layout(root: Path, image_name: str | None = None, mask_name: str | None = None) -> str:
    """The layout of ``root``, or a DataError saying what was looked for."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "pairs"
        raise DataError(f"{root}: a data path must be a folder or a .csv manifest of image,mask pairs")
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        return "msd"
    if any(root.glob("*_segmentation.mhd")):
        return "promise12"
    names = [(image_name, mask_name)] if image_name and mask_name else list(FOLDER_DEFAULTS)
    for sub in _visible(p for p in root.iterdir() if p.is_dir()):
        files = {p.name for p in sub.iterdir()}
        if any(img in files for img, _ in names):
            return "folders"
    if list(root.glob("*.csv")):
        return "pairs"
    raise DataError(
        f"{root}: no known data layout found. Expected one of: msd (imagesTr/, labelsTr/, dataset.json), "
        f"promise12 (CaseNN.mhd + CaseNN_segmentation.mhd), folders (one folder per patient holding "
        f"{' or '.join(f'{i} + {m}' for i, m in names)}; set data.image_name/data.mask_name for other names), "
        f"pairs (a .csv manifest with image,mask[,patient] columns)"
    )


def find_cases(root: str | Path, layout: str = "auto", image_name: str | None = None,
               mask_name: str | None = None, msd_channel: int = 0) -> tuple[str, list[Case]]:
    """The resolved layout and its cases, sorted by patient id.

    Raises:
        DataError: unknown layout, nothing found, an image without its mask,
            or a patient id that appears twice.
    """
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root, image_name, mask_name)
    finders = {"msd": _msd, "folders": _folders, "promise12": _promise12, "pairs": _pairs}
    if layout not in finders:
        raise DataError(f"unknown data.layout '{layout}'; valid: auto, {', '.join(LAYOUTS)}")
    if not root.exists():
        raise DataError(f"{root}: data path not found")
    if layout == "msd":
        cases = _msd(root, msd_channel)
    elif layout == "folders":
        cases = _folders(root, image_name, mask_name)
    else:
        cases = finders[layout](root)
    if not cases:
        raise DataError(f"{root}: the {layout} layout matched but holds no image/mask cases")
    seen: dict[str, Path] = {}
    for case in cases:
        if case.patient in seen:
            raise DataError(f"patient id '{case.patient}' appears twice ({seen[case.patient]} and {case.image}); "
                            f"patient ids must be unique")
        seen[case.patient] = case.image
    return layout, sorted(cases, key=lambda c: c.patient)


def _msd(root: Path, msd_channel: int) -> list[Case]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise DataError(f"{d}: missing; the msd layout needs imagesTr/ and labelsTr/ folders")
    allowed = None
    meta = root / "dataset.json"
    if meta.is_file():
        try:
            labels = json.loads(meta.read_text()).get("labels")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{meta}: not valid JSON: {exc}") from None
        if isinstance(labels, dict):
            # MSD writes {"0": "background", ...}; nnU-Net v2 writes {"background": 0, ...}.
            try:
                if all(str(k).isdigit() for k in labels):
                    allowed = {int(k) for k in labels}
                else:
                    allowed = {int(v) for v in labels.values() if not isinstance(v, list)}
            except (TypeError, ValueError):
                allowed = None
    label_files = {_stem(p): p for p in _visible(labels_dir.iterdir()) if is_volume_file(p)}
    image_files = [p for p in _visible(images_dir.iterdir()) if is_volume_file(p)]
    cases = []
    for img in image_files:
        stem = _stem(img)
        # nnU-Net style keeps one file per channel: NAME_0000.nii.gz; take the configured channel.
        base, _, chan = stem.rpartition("_")
        if base and len(chan) == 4 and chan.isdigit():
            if int(chan) != msd_channel:
                continue
            stem = base
        if stem not in label_files:
            raise DataError(f"{img}: image has no mask; expected {labels_dir / (stem + '.nii.gz')}")
        cases.append(Case(stem, img, label_files[stem], allowed))
    return cases


def _folders(root: Path, image_name: str | None, mask_name: str | None) -> list[Case]:
    if (image_name is None) != (mask_name is None):
        raise DataError("set both data.image_name and data.mask_name for the folders layout, or neither")
    names = [(image_name, mask_name)] if image_name else list(FOLDER_DEFAULTS)
    cases = []
    for sub in _visible(p for p in root.iterdir() if p.is_dir()):
        found = None
        for img, msk in names:
            if (sub / img).is_file():
                if not (sub / msk).is_file():
                    raise DataError(f"{sub / img}: image has no mask; expected {sub / msk}")
                found = Case(sub.name, sub / img, sub / msk)
                break
        if found is None:
            if any(is_volume_file(p) for p in sub.iterdir()):
                raise DataError(
                    f"{sub}: patient folder has no image named {' or '.join(i for i, _ in names)}; "
                    f"set data.image_name and data.mask_name to the file names used there"
                )
            continue  # an unrelated folder without volumes
        cases.append(found)
    return cases


def _promise12(root: Path) -> list[Case]:
    cases = []
    for img in _visible(root.glob("*.mhd")):
        if img.stem.endswith("_segmentation"):
            continue
        mask = img.with_name(img.stem + "_segmentation.mhd")
        if not mask.is_file():
            raise DataError(f"{img}: image has no mask; expected {mask}")
        cases.append(Case(img.stem, img, mask))
    return cases


def _pairs(root: Path) -> list[Case]:
    if root.is_dir():
        manifests = sorted(root.glob("*.csv"))
        if len(manifests) != 1:
            raise DataError(f"{root}: the pairs layout needs exactly one .csv manifest there, "
                            f"found {len(manifests)}; pass the .csv file itself as the data path")
        root = manifests[0]
    base = root.parent
    with open(root, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["image", "mask"]:
        rows = rows[1:]
    cases = []
    for line, row in enumerate(rows, start=2):
        if len(row) not in (2, 3):
            raise DataError(f"{root}: row {line} has {len(row)} columns; expected image,mask[,patient]")
        img, msk = (base / row[0].strip()), (base / row[1].strip())
        for p in (img, msk):
            if not p.is_file():
                raise DataError(f"{root}: row {line} names {p}, which does not exist")
        patient = row[2].strip() if len(row) == 3 and row[2].strip() else _stem(img)
        cases.append(Case(patient, img, msk))
    return cases


__all__ = ["Case", "FOLDER_DEFAULTS", "LAYOUTS", "NIFTI_SUFFIXES", "detect_layout", "find_cases"]
