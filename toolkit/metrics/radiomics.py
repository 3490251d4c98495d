"""Radiomic features of slices and their gland region, and the Fréchet Radiomic Distance (FRD).

The FRD (Konz, Osuala et al., "Fréchet Radiomic Distance (FRD): A Versatile
Metric for Comparing Medical Imaging Datasets", Medical Image Analysis 2026,
arXiv:2412.01496) is a Fréchet distance between Gaussians fitted to
radiomic features, not to a network's activations: first-order intensity
statistics and texture matrices (GLCM, GLRLM, GLSZM, NGTDM) that radiologists
and radiomics studies already read. This module follows the authors'
package ``frd-score`` 1.0.1 (FRD v1, its 2D path) step by step, with
``pyradiomics`` (the ``[frd]`` extra) doing the extraction:

- features: pyradiomics with frd-score's ``configs/extraction_2d.yaml``
  (:data:`SETTINGS`, :data:`IMAGE_TYPES`, :data:`FEATURE_CLASSES`), on each
  slice as a (1, H, W) volume of pixel spacing 1 (what frd-score gives a PNG
  or a 2D NIfTI), plus the numeric diagnostics frd-score keeps. Two regions
  per slice, concatenated: ``image`` (the whole slice: frd-score's mask when
  none is given, everything but one corner pixel) and ``gland`` (the slice's
  mask). A slice whose gland pyradiomics cannot describe (at most one pixel,
  or a few that resample to one voxel) gets NaN gland features (frd-score
  skips such an image).
- normalisation (:func:`frd_normalise`): rows with any NaN dropped, float32,
  z-score with the reference (real) set's mean and population std, columns
  with NaN/inf afterwards dropped in both sets.
- distance: the Fréchet distance of the normalised features; the FRD is its
  natural log (frd-score's default, ``log(d_F^2)``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.metrics.features import real_features, split_slices, subsample_rows, synthetic_features

if TYPE_CHECKING:
    from toolkit.metrics.extractors import FeatureExtractor
    from toolkit.plugin import EvalContext

INSTALL = ('pip install numpy versioneer setuptools wheel && pip install --no-build-isolation pyradiomics==3.0.1 '
           '&& pip install -e ".[frd]"')
REGIONS = ("image", "gland")
RECIPE = "frd-score-1.0.1-v1-2d"  # the recipe this module follows; part of the fingerprint

# frd-score 1.0.1, configs/extraction_2d.yaml (FRD v1, 2D), as pyradiomics parameters.
SETTINGS: dict[str, Any] = {
    "normalize": True, "normalizeScale": 100,
    "interpolator": "sitkBSpline", "resampledPixelSpacing": [2, 2, 0], "padDistance": 10, "preCrop": True,
    "force2D": True, "force2Ddimension": 0,
    "binWidth": 5, "voxelArrayShift": 300, "label": 1,
}
# LoG needs 4 pixels along every axis, so pyradiomics skips it on a one-slice volume (it logs a warning):
# in frd-score's 2D path, as here, only Original and Wavelet features are computed.
IMAGE_TYPES: dict[str, dict] = {"Original": {}, "LoG": {"sigma": [2.0, 3.0, 4.0, 5.0]}, "Wavelet": {}}
GLCM_FEATURES = ["Autocorrelation", "JointAverage", "ClusterProminence", "ClusterShade", "ClusterTendency",
                 "Contrast", "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance",
                 "JointEnergy", "JointEntropy", "Imc1", "Imc2", "Idm", "Idmn", "Id", "Idn", "InverseVariance",
                 "MaximumProbability", "SumEntropy", "SumSquares"]
FEATURE_CLASSES: dict[str, list[str] | None] = {"firstorder": None, "glcm": GLCM_FEATURES, "glrlm": None,
                                                "glszm": None, "ngtdm": None}


def import_radiomics() -> Any:
    """The pyradiomics package, or an ImportError saying how to install the ``[frd]`` extra."""
    try:
        import radiomics
        from radiomics import featureextractor  # noqa: F401  (the submodule the extractor needs)
    except ImportError as exc:
        raise ImportError(
            f"features='radiomic' (the Fréchet Radiomic Distance) needs pyradiomics, which is not installed "
            f"({exc}). Install the frd extra: {INSTALL} (the pyradiomics sdist imports numpy in its setup.py, "
            "so it builds only without build isolation)"
        ) from exc
    return radiomics


def pyradiomics_extractor() -> Any:
    """A pyradiomics extractor configured as frd-score's FRD v1 2D extraction, quiet below errors."""
    radiomics = import_radiomics()
    radiomics.setVerbosity(logging.ERROR + 10)  # LoG's "image too small" warning on every slice is expected
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    extractor = radiomics.featureextractor.RadiomicsFeatureExtractor(
        {"setting": dict(SETTINGS), "imageType": {k: dict(v) for k, v in IMAGE_TYPES.items()},
         "featureClass": {k: (list(v) if v else []) for k, v in FEATURE_CLASSES.items()}})
    return extractor


def _volume(array: np.ndarray) -> Any:
    """A (1, H, W) SimpleITK volume of spacing 1, as frd-score makes from a 2D image file."""
    import SimpleITK as sitk  # a dependency of pyradiomics

    volume = sitk.GetImageFromArray(array[None])
    volume.SetSpacing((1.0, 1.0, 1.0))
    return volume


def slice_features(extractor: Any, image: np.ndarray, mask: np.ndarray) -> dict[str, float] | None:
    """Radiomic features of one slice inside ``mask``, named as frd-score names them; None for a region
    pyradiomics cannot describe (at most one pixel, or one voxel once resampled to 2 px: a gland of a few
    pixels; frd-score skips such an image)."""
    if mask.sum() <= 1:
        return None
    try:
        output = extractor.execute(_volume(np.asarray(image, np.float32)), _volume(np.asarray(mask, np.uint8)))
    except ValueError as exc:  # pyradiomics' ROI check (imageoperations.checkMask), after resampling
        if "segmented voxel" in str(exc) or "too few dimensions" in str(exc):
            return None
        raise
    except RuntimeError as exc:  # SimpleITK: the label vanished when resampled (no bounding box to take)
        if "LabelShapeStatistics" in str(exc):
            return None
        raise
    features = {}
    for name, value in output.items():
        if "diagnostics" not in name:
            features[name.replace("original_", "")] = float(value)
            continue
        try:  # frd-score v1 keeps the numeric diagnostics (image mean, mask voxel count, ...): so do we
            features[name] = float(value)
        except (TypeError, ValueError):
            pass
    return features


def whole_slice_mask(shape: tuple[int, ...]) -> np.ndarray:
    """frd-score's mask for an image without one: every pixel but the first (a pyradiomics workaround)."""
    mask = np.ones(shape, np.uint8)
    mask[0, 0] = 0
    return mask


def radiomic_features(images: np.ndarray, masks: np.ndarray,
                      regions: Sequence[str] = REGIONS) -> tuple[np.ndarray, list[str]]:
    """Radiomic features [N, D] (float64) of slices [N, H, W] and their feature names, region by region.

    Args:
        images: grey slices (any intensity range: pyradiomics z-scores each one, ``normalize``).
        masks: binary gland masks [N, H, W] (used by the ``gland`` region).
        regions: ``image`` (whole slice) and/or ``gland`` (inside the mask), concatenated in this order.
    """
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 3 or masks.shape != images.shape:
        raise ValueError(f"radiomic features need slices and masks [N, H, W] of one shape, got {images.shape} "
                         f"and {masks.shape}")
    unknown = [r for r in regions if r not in REGIONS]
    if unknown or not regions:
        raise ValueError(f"unknown radiomic regions {unknown or list(regions)}; valid: {', '.join(REGIONS)}")
    extractor = pyradiomics_extractor()
    blocks, names = [], []
    for region in regions:
        rows = [slice_features(extractor, image, whole_slice_mask(image.shape) if region == "image" else mask)
                for image, mask in zip(images, masks)]
        first = next((r for r in rows if r is not None), None)
        if first is None:
            raise ValueError(f"no slice has a {region} region of more than one pixel; radiomic features "
                             "need one")
        keys = list(first)
        blocks.append(np.array([[r[k] for k in keys] if r is not None else [np.nan] * len(keys) for r in rows],
                               dtype=np.float64).reshape(len(rows), len(keys)))
        names += [f"{region}:{k}" for k in keys]
    return np.concatenate(blocks, axis=1), names


def frd_normalise(reference: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets normalised as frd-score v1 does, against the reference (real) set.

    Rows with any NaN are dropped (slices without a gland region), features
    cast to float32, z-scored with the reference's mean and population std
    (``nanmean``/``nanstd``), and columns with NaN or inf in either set
    afterwards (a feature constant over the reference) dropped from both.
    """
    sets = []
    for feats in (reference, other):
        feats = np.asarray(feats)
        if feats.ndim != 2 or feats.shape[1] != np.shape(reference)[1]:
            raise ValueError(f"radiomic feature sets must be [N, D] with one D, got {np.shape(reference)} and "
                             f"{np.shape(other)}")
        sets.append(feats[~np.isnan(feats).any(axis=1)].astype(np.float32))
    if min(len(s) for s in sets) < 2:
        raise ValueError(f"fewer than 2 slices with radiomic features in a set ({[len(s) for s in sets]} after "
                         "dropping slices without a gland region)")
    mean, std = np.nanmean(sets[0], axis=0), np.nanstd(sets[0], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = [(s - mean) / std for s in sets]
    keep = np.ones(sets[0].shape[1], dtype=bool)
    for s in normalised:
        keep &= np.isfinite(s).all(axis=0)
    if not keep.any():
        raise ValueError("every radiomic feature is constant over the reference set; no FRD can be computed")
    return normalised[0][:, keep].astype(np.float64), normalised[1][:, keep].astype(np.float64)


def frd_from_fd(fd: float) -> float:
    """The FRD as frd-score reports it: the natural log of the squared Fréchet distance (-inf at 0)."""
    return float(np.log(fd)) if fd > 0 else float("-inf")


class RadiomicExtractor:
    """The ``radiomic`` feature space: pyradiomics features of each slice and its gland region.

    Unlike the networks' feature spaces it needs each slice's mask, so it
    extracts through :meth:`with_masks`; calling it on images alone is an error.
    Its features are raw (units differ by orders of magnitude): compare them
    only after :func:`frd_normalise`, as :func:`radiomic_pair` does.
    """

    name = "radiomic"
    needs_masks = True

    def __init__(self, regions: Sequence[str] = REGIONS) -> None:
        radiomics = import_radiomics()
        self.regions = tuple(regions)
        self.fingerprint = f"radiomic-{RECIPE}-pyradiomics{radiomics.__version__}-{'+'.join(self.regions)}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        raise TypeError("radiomic features need each slice's mask: use extractor.with_masks(images, masks)")

    def features(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return radiomic_features(images, masks, self.regions)[0]

    def with_masks(self, images: np.ndarray, masks: np.ndarray) -> BoundRadiomicExtractor:
        return BoundRadiomicExtractor(self, images, masks)


class BoundRadiomicExtractor:
    """A radiomic extractor holding the masks of exactly one set of slices.

    The feature cache (``toolkit.metrics.features``) calls an extractor on
    images alone; this one pairs them with their masks, and refuses any
    other images, so a mask can never describe the wrong slice. The masks'
    hash is part of its fingerprint, so cached features follow the masks too.
    """

    name = "radiomic"

    def __init__(self, parent: RadiomicExtractor, images: np.ndarray, masks: np.ndarray) -> None:
        self.parent = parent
        self.images = np.asarray(images)
        self.masks = np.asarray(masks)
        digest = hashlib.sha256(np.ascontiguousarray(self.masks, dtype=np.uint8).tobytes()).hexdigest()[:12]
        self.fingerprint = f"{parent.fingerprint}-masks{digest}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.shape != self.images.shape or not np.array_equal(images, self.images):
            raise ValueError("these slices are not the ones whose masks this radiomic extractor holds")
        return self.parent.features(images, self.masks)


def radiomic_pair(ctx: EvalContext, extractor: RadiomicExtractor, reference: str,
                  max_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radiomic features of a real split and of the synthetic set (same subsample as the other
    spaces: real ones cached on disk, synthetic ones once per evaluation)."""
    slices = split_slices(ctx, reference)
    rows = subsample_rows(len(slices), max_samples, ctx.seed)
    real = real_features(ctx, reference, extractor.with_masks(slices.images[rows], slices.masks[rows]),
                         max_samples)
    if len(ctx.synthetic) == 0:
        raise ValueError("the synthetic set is empty; nothing to evaluate")
    rows = subsample_rows(len(ctx.synthetic), max_samples, ctx.seed)
    bound = extractor.with_masks(ctx.synthetic.images[rows], ctx.synthetic.masks[rows])
    fake = synthetic_features(ctx, bound, max_samples)
    return frd_normalise(real, fake)


def feature_sets(ctx: EvalContext, extractor: FeatureExtractor | RadiomicExtractor, reference: str,
                 max_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The (real, synthetic) feature rows an evaluator compares, in any feature space: radiomic features need
    each slice's mask and are normalised against the real set (frd-score's way), the others are plain rows."""
    if isinstance(extractor, RadiomicExtractor):
        return radiomic_pair(ctx, extractor, reference, max_samples)
    return (real_features(ctx, reference, extractor, max_samples),
            synthetic_features(ctx, extractor, max_samples))
