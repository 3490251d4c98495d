"""Mask sources: plausible deformed masks with their own condition vectors, real masks, another run's masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.conftest import make_slices
from toolkit.data.masks import (
    DeformedMasks,
    RealMasks,
    RunMasks,
    build_mask_source,
    check_source,
    mask_condition,
)
from toolkit.data.slices import SliceSet
from toolkit.types import Batch


@pytest.fixture
def train() -> SliceSet:
    return make_slices(n_patients=3, slices_per_patient=8, size=32)


def test_deformed_masks_differ_but_stay_one_plausible_gland(train):
    source = DeformedMasks(train)
    masks, cond = source.draw(64, torch.Generator().manual_seed(0))
    assert masks.shape == (64, 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    originals, _ = RealMasks(train).draw(64, torch.Generator().manual_seed(0))  # same rows: same first draw
    full = originals.flatten(1).any(1)
    changed = [(not torch.equal(masks[i], originals[i])) for i in torch.nonzero(full).flatten().tolist()]
    assert np.mean(changed) > 0.8, "most gland masks should be deformed"
    low, high = source.area_range
    for i in torch.nonzero(full).flatten().tolist():
        m = masks[i, 0].numpy()
        assert ndimage.label(m, structure=np.ones((3, 3)))[1] == 1
        assert low <= m.mean() <= high
    assert not masks[~full].any(), "slices without gland stay empty"


def test_deformed_mask_condition_matches_the_mask_it_ships_with(train):
    masks, cond = DeformedMasks(train).draw(32, torch.Generator().manual_seed(1))
    assert torch.allclose(cond[:, 1], masks.mean(dim=(1, 2, 3)))
    assert torch.allclose(mask_condition(masks, cond[:, 0]), cond)


def test_draws_are_deterministic_given_the_generator(train):
    a = DeformedMasks(train).draw(16, torch.Generator().manual_seed(3))
    b = DeformedMasks(train).draw(16, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_real_masks_are_training_masks(train):
    masks, cond = RealMasks(train).draw(10, torch.Generator().manual_seed(0))
    real = {m.tobytes() for m in train.masks.astype(np.float32)}
    assert all(m[0].numpy().tobytes() in real for m in masks)


def test_run_source_reads_another_runs_synthetic_masks(train, tmp_path):
    # Another run's set: squares of side 2..5 (unlike any training mask), positions of its own, and a stored
    # area that is wrong on purpose (the source measures the area on the mask).
    sides, positions = [2, 3, 4, 5], [0.1, 0.3, 0.6, 0.9]
    masks = torch.zeros(4, 1, 32, 32)
    for i, side in enumerate(sides):
        masks[i, :, 1:1 + side, 1:1 + side] = 1.0
    stored = torch.tensor([[p, 0.5] for p in positions])
    (tmp_path / "synthetic").mkdir()
    SliceSet.from_batch(Batch(torch.zeros(4, 1, 32, 32), masks, stored)).save(tmp_path / "synthetic" / "synthetic.npz")
    source = build_mask_source(f"run:{tmp_path}", train)
    assert isinstance(source, RunMasks)
    drawn, cond = source.draw(32, torch.Generator().manual_seed(0))
    assert drawn.shape == (32, 1, 32, 32)
    which = [sides.index(round(float(m.sum()) ** 0.5)) for m in drawn]  # each draw is one of the four squares
    assert sorted(set(which)) == [0, 1, 2, 3]  # drawn with replacement from all of them
    for m, c, i in zip(drawn, cond, which):
        assert torch.equal(m, masks[i])
        assert c.tolist() == pytest.approx([positions[i], sides[i] ** 2 / 1024])
    with pytest.raises(Exception, match="its masks are 32 px, this run's data.image_size is 64"):
        RunMasks(tmp_path, 64)
    with pytest.raises(Exception, match="synthetic.npz does not exist"):
        build_mask_source(f"run:{tmp_path / 'nope'}", train)


def test_unknown_source_names_the_valid_ones():
    with pytest.raises(ValueError, match="deformed_real, real, run:<dir>"):
        check_source("deformed")


def test_deformed_real_control_warps_image_and_mask_together(train):
    from toolkit.plugin import TrainContext
    from toolkit.registry import GENERATORS
    from toolkit.types import DataSpec

    cls = GENERATORS.get("deformed_real")
    still = cls(DataSpec(image_size=32), rotate_deg=0.0, scale=0.0, translate=0.0, elastic=0.0)
    still.setup(TrainContext(train=train))
    out = still.sample(12, generator=torch.Generator().manual_seed(0))
    # No deformation but the flip: every pair is a training pair or its mirror, image and mask alike.
    real_images, real_masks = train.images, train.masks.astype(np.float32)
    for image, mask in zip(out.image[:, 0].numpy(), out.mask[:, 0].numpy()):
        matches = [np.abs(real_images - im).max(axis=(1, 2)) < 1e-5 for im in (image, image[:, ::-1])]
        same_mask = [(real_masks == m).all(axis=(1, 2)) for m in (mask, mask[:, ::-1])]
        assert any((a & b).any() for a, b in zip(matches, same_mask))
    warped = cls(DataSpec(image_size=32))
    warped.setup(TrainContext(train=train))
    moved = warped.sample(12, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(moved.image, out.image) and set(moved.mask.unique().tolist()) <= {0.0, 1.0}
    # The gland is where the mask says: brighter inside than outside (the toy glands are bright).
    inside = moved.image[moved.mask > 0].mean()
    outside = moved.image[moved.mask == 0].mean()
    assert inside > outside + 0.2
