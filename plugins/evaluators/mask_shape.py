"""Mask shape and image sharpness: do synthetic pairs look like gland slices?

A whole-gland mask on an axial slice is one connected region, or empty
above and below the gland. Joint (image, mask) generators can draw several
islands or specks instead, and VAE-family images are blurry. This evaluator
compares the synthetic set with a real split (``toolkit.data.maskshape``):

- ``single_component_share``: share of synthetic masks that are one
  8-connected region or empty, next to the real share; the primary metric is
  their absolute gap (``single_component_gap``, lower is better).
- the distribution of mask area (foreground fraction): means and the
  two-sample Kolmogorov-Smirnov statistic ``area_ks`` (0: same, 1: disjoint),
  and the share of empty masks of each set.
- holes per non-empty mask, and mean number of components.
- ``sharpness``: mean absolute Laplacian of the images, synthetic and real,
  and their ratio (below 1: blurrier than the real slices).
- ``gland_texture``: intensity std inside the gland, and ``outline_edge``:
  the image gradient on the mask's outline over the slice's mean, each with
  its real value and ratio. They say *how* an image disagrees with its mask
  when label fidelity is low: a gland interior busier than real, or the
  outline painted into the image as a contour line.

Pixel statistics only (no network), so it takes a second and needs no cache.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from toolkit.data.maskshape import (
    area_ks,
    component_counts,
    gland_texture,
    hole_counts,
    laplacian_sharpness,
    mask_areas,
    outline_edge_contrast,
)
from toolkit.metrics.features import split_slices, subsample_rows, write_record
from toolkit.plugin import EvalContext, Evaluator
from toolkit.registry import EVALUATORS


def _shape_stats(masks: np.ndarray) -> dict[str, float]:
    counts = component_counts(masks)
    areas = mask_areas(masks)
    non_empty = counts > 0
    holes = hole_counts(masks[non_empty]) if non_empty.any() else np.zeros(0)
    return {
        "single_component_share": float(np.mean(counts <= 1)),
        "empty_share": float(np.mean(~non_empty)),
        "components_mean": float(counts[non_empty].mean()) if non_empty.any() else 0.0,
        "holes_mean": float(holes.mean()) if len(holes) else 0.0,
        "area_mean": float(areas.mean()),
    }


@EVALUATORS.register("mask_shape")
class MaskShape(Evaluator):
    """Connected components, area distribution and holes of masks, and image sharpness, synthetic vs real."""

    metrics = (
        "single_component_share", "real_single_component_share", "single_component_gap",
        "empty_share", "real_empty_share", "components_mean", "real_components_mean",
        "holes_mean", "real_holes_mean", "area_mean", "real_area_mean", "area_ks",
        "sharpness", "real_sharpness", "sharpness_ratio",
        "gland_texture", "real_gland_texture", "gland_texture_ratio",
        "outline_edge", "real_outline_edge", "outline_edge_ratio",
    )
    primary = "single_component_gap"
    higher_is_better = False
    tiny = {"max_samples": 64}

    def __init__(
        self,
        reference: Literal["train", "val", "test"] = "train",  # real split the synthetic set is compared with
        max_samples: int = 2000,  # slices per set (seeded subsample); shape statistics are cheap
    ) -> None:
        if max_samples < 1:
            raise ValueError(f"evaluators.mask_shape: max_samples must be >= 1, got {max_samples}")
        self.reference = reference
        self.max_samples = max_samples

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        real = split_slices(ctx, self.reference)
        fake = ctx.synthetic
        if len(fake) == 0:
            raise ValueError("evaluators.mask_shape: the synthetic set is empty")
        real_rows = subsample_rows(len(real), self.max_samples, ctx.seed)
        fake_rows = subsample_rows(len(fake), self.max_samples, ctx.seed)
        real_masks, fake_masks = real.masks[real_rows], fake.masks[fake_rows]
        synthetic, reference = _shape_stats(fake_masks), _shape_stats(real_masks)
        sharp = laplacian_sharpness(fake.images[fake_rows])
        real_sharp = laplacian_sharpness(real.images[real_rows])
        result = {
            **synthetic,
            **{f"real_{k}": v for k, v in reference.items()},
            "single_component_gap": abs(synthetic["single_component_share"] - reference["single_component_share"]),
            "area_ks": area_ks(mask_areas(fake_masks), mask_areas(real_masks)),
            "sharpness": sharp,
            "real_sharpness": real_sharp,
            "sharpness_ratio": sharp / real_sharp if real_sharp > 0 else float("nan"),
        }
        for key, stat in (("gland_texture", gland_texture), ("outline_edge", outline_edge_contrast)):
            fake_value = stat(fake.images[fake_rows], fake_masks)
            real_value = stat(real.images[real_rows], real_masks)
            result.update({key: fake_value, f"real_{key}": real_value,
                           f"{key}_ratio": fake_value / real_value if real_value > 0 else float("nan")})
        result = {k: result[k] for k in self.metrics}
        write_record(ctx, "mask_shape", {"reference_split": self.reference, "n_real": len(real_rows),
                                          "n_synthetic": len(fake_rows), **result})
        return result
