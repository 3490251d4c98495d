"""One patient's volume pair -> preprocessed 2D axial slices.

Steps, in order: channel choice, geometry and label checks, radiological axial
slicing, per-volume percentile clip scaled to [-1, 1], a square centre crop
(in mm, so anisotropic pixels keep their aspect), and a resize to
``image_size`` (antialiased bilinear for images, nearest for masks, so mask
values stay exactly {0, 1}).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.data.errors import DataError
from toolkit.data.layouts import Case
from toolkit.data.volumes import Volume, axial_slices, read_volume
from toolkit.settings import DataSettings

#: More distinct values than this in a "mask" means it is an image, not a label map.
MAX_LABELS = 16


class EmptyMask(DataError):
    """A mask with no foreground anywhere in its volume."""


def pick_channel(vol: Volume, channel: int) -> np.ndarray:
    """The 3D array of a (possibly 4D, multi-channel) image."""
    if vol.array.ndim == 3:
        return vol.array
    n = vol.array.shape[3]
    if not 0 <= channel < n:
        raise DataError(f"{vol.path}: data.msd_channel={channel} but the image has {n} channels (0..{n - 1})")
    return vol.array[..., channel]


def check_pair(image: Volume, mask: Volume) -> None:
    """Image and mask must share shape and voxel-to-world geometry."""
    if image.array.shape[:3] != mask.array.shape[:3]:
        raise DataError(f"{mask.path}: mask shape {mask.array.shape[:3]} differs from image shape "
                        f"{image.array.shape[:3]} ({image.path}); they must be voxel-aligned")
    # Tolerate float rounding in headers: 1e-3 of a voxel / 1e-2 mm.
    if not np.allclose(image.affine, mask.affine, atol=1e-2, rtol=1e-3):
        raise DataError(f"{mask.path}: mask geometry (voxel-to-world affine) differs from the image's ({image.path}); "
                        f"resample the mask onto the image grid.\nmask affine:\n{np.round(mask.affine, 3)}\n"
                        f"image affine:\n{np.round(image.affine, 3)}")


def check_labels(mask: Volume, allowed: set[int] | None = None) -> np.ndarray:
    """Integer label map [X, Y, Z]; errors list the values found."""
    arr = mask.array
    if arr.ndim != 3:
        raise DataError(f"{mask.path}: a mask must be a 3D label map, found shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{mask.path}: mask holds NaN/inf; it must be an integer label map")
        values = np.unique(arr)
        if not np.all(values == np.round(values)):
            frac = values[values != np.round(values)][:8]
            raise DataError(f"{mask.path}: mask has non-integer values (e.g. {', '.join(f'{v:g}' for v in frac)}); "
                            f"expected integer labels such as 0 = background, 1 = gland")
    else:
        values = np.unique(arr)
    values = values.astype(np.int64)
    shown = ", ".join(str(v) for v in values[:12]) + (" ..." if len(values) > 12 else "")
    if len(values) > MAX_LABELS or values.min() < 0:
        raise DataError(f"{mask.path}: unexpected mask values {shown} ({len(values)} distinct); expected a few "
                        f"non-negative integer labels (0 = background, >0 = gland or zones). Is this an image?")
    if allowed is not None and not set(values.tolist()) <= allowed:
        raise DataError(f"{mask.path}: mask values {shown} include labels not declared in dataset.json "
                        f"({sorted(allowed)})")
    return arr.astype(np.int16, copy=False)


def gland_labels(values: list[int], setting: str | list[int], path) -> list[int]:
    """The label values that count as gland under ``data.labels``, given the values a mask holds (> 0)."""
    if setting == "binary":
        if values and values != [1]:
            raise DataError(f"{path}: mask labels {values} but data.labels: binary expects only 0 and 1; set "
                            "data.labels: nonzero (every label > 0 is gland) or list the gland labels, e.g. [1, 2]")
        return [1]
    if setting == "nonzero":
        return values
    return sorted(setting)


def normalise(image: np.ndarray, percentiles: tuple[float, float], path) -> np.ndarray:
    """Clip to per-volume percentiles and scale to [-1, 1] (float32)."""
    lo_p, hi_p = percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise DataError(f"data.percentiles must be two numbers 0 <= low < high <= 100, got {list(percentiles)}")
    lo, hi = np.percentile(image, [lo_p, hi_p])
    if not hi > lo:
        raise DataError(f"{path}: image intensities are constant between the {lo_p} and {hi_p} percentiles "
                        f"({lo:g}); cannot normalise an empty or blank image")
    out = (np.clip(image.astype(np.float32), lo, hi) - lo) / (hi - lo)
    return out * 2.0 - 1.0


def crop_box(rows: int, cols: int, spacing_rc: tuple[float, float], fraction: float) -> tuple[slice, slice]:
    """A centred square (in mm) covering ``fraction`` of the shorter physical side."""
    if not 0 < fraction <= 1:
        raise DataError(f"data.crop_fraction must be in (0, 1], got {fraction}")
    side_mm = fraction * min(rows * spacing_rc[0], cols * spacing_rc[1])
    n_r = max(1, min(rows, int(round(side_mm / spacing_rc[0]))))
    n_c = max(1, min(cols, int(round(side_mm / spacing_rc[1]))))
    r0, c0 = (rows - n_r) // 2, (cols - n_c) // 2
    return slice(r0, r0 + n_r), slice(c0, c0 + n_c)


def resize(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """[Z, H, W] stacks to [Z, size, size]: antialiased bilinear images, nearest masks."""
    img = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    msk = torch.from_numpy(np.ascontiguousarray(masks.astype(np.float32)))[:, None]
    if img.shape[-2:] != (size, size):
        img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        msk = F.interpolate(msk, size=(size, size), mode="nearest-exact")
    return img[:, 0].clamp_(-1, 1).numpy(), msk[:, 0].numpy().astype(np.uint8)


def condition(masks: np.ndarray) -> np.ndarray:
    """Per slice: (relative position within the gland's z-extent, gland area fraction)."""
    z = np.arange(len(masks), dtype=np.float32)
    present = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    area = masks.reshape(len(masks), -1).mean(axis=1, dtype=np.float64).astype(np.float32)
    if len(present) == 0:
        return np.stack([np.full_like(z, 0.5), area], axis=1)
    z0, z1 = present[0], present[-1]
    rel = (z - z0) / (z1 - z0) if z1 > z0 else np.where(z == z0, 0.5, (z - z0)).astype(np.float32)
    return np.stack([rel.astype(np.float32), area], axis=1)


def preprocess_case(case: Case, cfg: DataSettings) -> dict[str, np.ndarray]:
    """Read and preprocess one case into arrays of a SliceSet (without patient ids).

    Raises:
        EmptyMask: the mask has no foreground (the caller skips or fails).
        DataError: any other problem with the files.
    """
    image = read_volume(case.image)
    mask = read_volume(case.mask)
    image_arr = pick_channel(image, cfg.msd_channel)
    check_pair(Volume(image_arr, image.affine, image.path), mask)
    labels = check_labels(mask, case.allowed_labels)
    if not (labels > 0).any():
        hint = "skipped (data.empty_mask: skip)" if cfg.empty_mask == "skip" else \
            "set data.empty_mask: skip to leave such patients out"
        raise EmptyMask(f"{mask.path}: mask has no foreground in the whole volume (patient {case.patient}); {hint}")
    found = sorted(int(v) for v in np.unique(labels) if v > 0)
    chosen = gland_labels(found, cfg.labels, mask.path)
    sx, sy, sz = image.spacing
    img = axial_slices(image_arr)
    gland = axial_slices(np.isin(labels, chosen))
    img = normalise(img, tuple(cfg.percentiles), image.path)
    rows, cols = crop_box(img.shape[1], img.shape[2], (sy, sx), cfg.crop_fraction)
    size = cfg.image_size
    images, masks = resize(img[:, rows, cols], gland[:, rows, cols], size)
    # Millimetres per preprocessed pixel (rows, columns) and between slices, for export headers.
    spacing = np.array([(rows.stop - rows.start) * sy / size, (cols.stop - cols.start) * sx / size, sz], np.float32)
    return {
        "images": images.astype(np.float32),
        "masks": masks,
        "cond": condition(masks),
        "slice_index": np.arange(len(images), dtype=np.int64),
        "spacing": np.tile(spacing, (len(images), 1)),
        "labels": found,  # the values > 0 this mask holds (reported, not part of the SliceSet)
    }
