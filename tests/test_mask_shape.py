"""Mask shape statistics, the largest-component clean-up, and the mask_shape evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.data.maskshape import (
    POSTPROCESS_MODES,
    area_ks,
    component_counts,
    gland_texture,
    hole_counts,
    laplacian_sharpness,
    mask_areas,
    outline_edge_contrast,
    postprocess_masks,
    single_component_share,
)


def disc(size: int = 32, cy: float = 16, cx: float = 16, r: float = 6) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def fragmented() -> np.ndarray:
    """A gland disc with a hole, plus two islands (one diagonal-only neighbour is part of the disc)."""
    m = disc()
    m[15:17, 15:17] = 0  # hole
    m[2:4, 2:4] = 1  # island
    m[28, 28] = 1  # speck
    m[16 + 7, 16] = 0
    return m


def test_counts_components_holes_and_areas() -> None:
    empty = np.zeros((32, 32), np.uint8)
    diagonal = np.zeros((32, 32), np.uint8)
    diagonal[5, 5] = diagonal[6, 6] = 1  # 8-connected: one component
    stack = np.stack([disc(), fragmented(), empty, diagonal])
    assert component_counts(stack).tolist() == [1, 3, 0, 1]
    assert hole_counts(stack).tolist() == [0, 1, 0, 0]
    assert single_component_share(stack) == pytest.approx(0.75)
    # [N, 1, H, W], bool and float inputs give the same answers.
    assert component_counts(stack[:, None].astype(bool)).tolist() == [1, 3, 0, 1]
    assert component_counts(stack.astype(np.float32) * 0.9).tolist() == [1, 3, 0, 1]
    areas = mask_areas(stack)
    assert areas[2] == 0 and areas[0] == pytest.approx(disc().mean())


def test_largest_component_keeps_one_filled_region_and_empty_stays_empty() -> None:
    stack = np.stack([fragmented(), np.zeros((32, 32), np.uint8)])[:, None]
    out = postprocess_masks(stack, "largest_component")
    assert out.shape == stack.shape and out.dtype == stack.dtype
    assert component_counts(out).tolist() == [1, 0]
    assert hole_counts(out).tolist() == [0, 0]
    assert out[0, 0, 2, 2] == 0 and out[0, 0, 28, 28] == 0  # islands gone
    assert out[0, 0, 16, 16] == 1  # hole filled
    assert set(np.unique(out)) <= {0, 1}
    # A clean disc is unchanged; "none" returns an equal copy, never the same array.
    assert np.array_equal(postprocess_masks(disc(), "largest_component"), disc())
    same = postprocess_masks(stack, "none")
    assert np.array_equal(same, stack) and same is not stack


def test_postprocess_rejects_unknown_mode_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="none, largest_component"):
        postprocess_masks(disc(), "biggest")
    assert POSTPROCESS_MODES == ("none", "largest_component")


def test_area_ks_and_sharpness() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.0, 0.1, 200)
    assert area_ks(a, a) == 0.0
    assert area_ks(a, a + 0.5) == 1.0
    sharp = np.sign(rng.standard_normal((4, 32, 32)))
    smooth = np.repeat(np.repeat(sharp[:, ::8, ::8], 8, axis=1), 8, axis=2) * 0.5
    assert laplacian_sharpness(sharp) > 4 * laplacian_sharpness(smooth)
    assert laplacian_sharpness(np.zeros((2, 1, 16, 16))) == 0.0


def test_gland_texture_and_outline_edge_see_a_busy_interior_and_a_painted_contour() -> None:
    rng = np.random.default_rng(0)
    masks = np.stack([disc(r=8), disc(cx=12, r=6)])
    yy, xx = np.mgrid[:32, :32]
    soft = np.stack([0.02 * xx + 0.01 * yy] * 2)  # the same gradient everywhere: nothing marks the outline
    busy = soft + masks * rng.uniform(-0.5, 0.5, masks.shape)  # the same, with texture inside the gland
    outline = masks.astype(bool) & ~np.stack([np.pad(m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2]
                                                     & m[1:-1, 2:], 1) for m in masks.astype(bool)])
    painted = soft + 0.8 * outline  # a contour line along the mask
    assert gland_texture(busy, masks) > 3 * gland_texture(soft, masks)
    assert outline_edge_contrast(soft, masks) == pytest.approx(1.0, abs=0.05)
    assert outline_edge_contrast(painted, masks) > 2.0
    assert np.isnan(gland_texture(soft, np.zeros_like(masks)))  # no gland anywhere: undefined, not 0
    assert gland_texture(soft[:, None], masks[:, None]) == gland_texture(soft, masks)  # [N, 1, H, W] too


def test_mask_shape_evaluator_sees_fragments_and_blur(tmp_path) -> None:
    from test_contract import tiny_context

    from toolkit.registry import EVALUATORS

    ctx = tiny_context(tmp_path)
    clean = EVALUATORS.get("mask_shape")(max_samples=64).evaluate(ctx)
    assert clean["real_single_component_share"] == 1.0
    assert clean["single_component_gap"] == 0.0
    # Add an island to every synthetic mask and blur the images: both must show.
    masks = ctx.synthetic.masks.copy()
    masks[:, 0, 0] = 1
    images = ctx.synthetic.images.copy()
    images = 0.25 * (images + np.roll(images, 1, 1) + np.roll(images, 1, 2) + np.roll(images, (1, 1), (1, 2)))
    from toolkit.data.slices import SliceSet

    s = ctx.synthetic
    ctx.synthetic = SliceSet(images, masks, s.cond, s.patient, s.slice_index)
    broken = EVALUATORS.get("mask_shape")(max_samples=64).evaluate(ctx)
    non_empty = (s.masks.reshape(len(s), -1).max(1) > 0).mean()
    assert broken["single_component_share"] == pytest.approx(1.0 - non_empty)
    assert broken["single_component_gap"] > 0.5
    assert broken["sharpness"] < clean["sharpness"]
    for key in ("gland_texture", "outline_edge"):
        assert clean[f"{key}_ratio"] == pytest.approx(clean[key] / clean[f"real_{key}"])
