"""Reading 3D volumes into one canonical orientation.

Every reader returns the voxel array in nibabel's closest-canonical RAS+ layout:
axis 0 runs towards the patient's Right, axis 1 towards Anterior, axis 2
towards Superior. NIfTI goes through nibabel; MetaImage/NRRD through SimpleITK,
whose LPS+ geometry is turned into a RAS+ affine first so that both formats
pass through the same ``as_closest_canonical`` step and come out identical.

:func:`axial_view` then turns one axial slice into the radiological display
convention (anterior at the top row, the patient's left on the image's right).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from toolkit.data.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """A volume in canonical RAS+ voxel order.

    Attributes:
        array: [X, Y, Z] (or [X, Y, Z, C] for multi-channel images) as stored.
        affine: 4x4 voxel-to-RAS+ world matrix (mm) after reorientation.
        path: the file it came from.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three canonical axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def is_volume_file(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:
        raise DataError(
            "reading MetaImage/NRRD files needs SimpleITK; install it with "
            "`pip install ganseg[mhd]` (or `pip install SimpleITK`)"
        ) from None
    return sitk


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI, MetaImage or NRRD volume and reorient it to RAS+.

    Raises:
        DataError: the file is missing, unreadable, truncated, not 3D/4D, or
            holds NaN/inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        try:
            img = nib.as_closest_canonical(nib.load(str(path)))
            array = np.asanyarray(img.dataobj)
            affine = img.affine
        except Exception as exc:  # nibabel raises many types for broken files
            raise DataError(f"{path}: cannot read this NIfTI file (unreadable or truncated): {exc}") from None
    elif name.endswith(ITK_SUFFIXES):
        sitk = _sitk()
        try:
            img = sitk.ReadImage(str(path))
            array = sitk.GetArrayFromImage(img)
        except Exception as exc:
            raise DataError(f"{path}: cannot read this MetaImage/NRRD file (unreadable or truncated): {exc}") from None
        ndim = img.GetDimension()
        if ndim != 3:
            raise DataError(f"{path}: expected a 3D volume, found {ndim} dimensions")
        # SimpleITK gives [z, y, x] (+ components last); nibabel's order is [x, y, z].
        array = np.moveaxis(array, (0, 1, 2), (2, 1, 0))
        direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
        spacing = np.asarray(img.GetSpacing(), dtype=float)
        affine = np.eye(4)
        affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
        affine[:3, 3] = LPS_TO_RAS @ np.asarray(img.GetOrigin(), dtype=float)
        canonical = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
        array = np.asanyarray(canonical.dataobj)
        affine = canonical.affine
    else:
        raise DataError(f"{path}: unknown volume format; expected one of {', '.join(VOLUME_SUFFIXES)}")
    if array.ndim not in (3, 4):
        raise DataError(f"{path}: expected a 3D volume (or 4D multi-channel), found shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{path}: {bad} voxels are NaN or inf; intensities must be finite numbers")
    return Volume(np.asarray(array), np.asarray(affine, dtype=float), path)


def axial_view(slice_xy: np.ndarray) -> np.ndarray:
    """A canonical [X, Y] axial slice as an image [rows, cols] in radiological view.

    Rows run anterior (top) to posterior; columns run from the patient's
    right (left edge) to the patient's left (right edge), as radiologists
    read axial MR from the feet.
    """
    return np.ascontiguousarray(slice_xy[::-1, ::-1].T)


def axial_slices(array: np.ndarray) -> np.ndarray:
    """A canonical [X, Y, Z] volume as [Z, rows, cols] radiological axial slices."""
    return np.ascontiguousarray(np.moveaxis(array[::-1, ::-1], 2, 0).transpose(0, 2, 1))


def write_volume(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a NIfTI volume (``.nii`` or ``.nii.gz``) atomically; the affine carries the voxel spacing (mm).

    The counterpart of :func:`read_volume` for the phantom and for exports:
    ``read_volume(write_volume(p, a, A))`` gives ``a`` back in canonical order.
    """
    import gzip

    from toolkit.io import atomic_write

    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: write_volume writes NIfTI; name the file .nii or .nii.gz")
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    image.header.set_xyzt_units("mm")
    data = image.to_bytes()
    return atomic_write(path, gzip.compress(data, compresslevel=6, mtime=0) if path.name.lower().endswith(".gz") else data)


def spacing_affine(spacing_xyz: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """A voxel-to-RAS+ affine with the given voxel size and no rotation (for volumes without a source geometry)."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.asarray(spacing_xyz, dtype=float))
    return affine


def stored_orientation(path: Path) -> str:
    """The axis codes a volume is stored in (e.g. ``LPS``), before the loader reorients it to RAS."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "".join(nib.aff2axcodes(nib.load(str(path)).affine))
    if name.endswith(ITK_SUFFIXES):
        reader = _sitk().ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        direction = np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3)
        return "".join(nib.aff2axcodes(np.block([[LPS_TO_RAS @ direction, np.zeros((3, 1))], [np.zeros((1, 3)), 1]])))
    return "?"
