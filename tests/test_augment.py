"""Segmenter augmentation: shapes, binary masks, determinism, image/mask alignment."""

from __future__ import annotations

import pytest
import torch

from toolkit.data.augment import augment_batch


def pairs(n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose bright region IS the mask, so alignment can be checked after any transform."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = []
    for _ in range(n):
        cy, cx = torch.randint(10, size - 10, (2,), generator=g).tolist()
        masks.append((((yy - cy) / 6.0) ** 2 + ((xx - cx) / 4.0) ** 2 <= 1).float())
    mask = torch.stack(masks)[:, None]
    image = mask * 1.6 - 0.8
    return image, mask


def test_shapes_ranges_and_binary_masks():
    image, mask = pairs()
    out_image, out_mask = augment_batch(image, mask, torch.Generator().manual_seed(1), elastic=0.05)
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert out_image.min() >= -1 and out_image.max() <= 1
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert out_mask.sum() > 0.5 * mask.sum()  # small transforms keep most of the gland


def test_deterministic_given_the_generator():
    image, mask = pairs()
    a = augment_batch(image, mask, torch.Generator().manual_seed(7), elastic=0.05)
    b = augment_batch(image, mask, torch.Generator().manual_seed(7), elastic=0.05)
    c = augment_batch(image, mask, torch.Generator().manual_seed(8), elastic=0.05)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_image_and_mask_move_together():
    image, mask = pairs()
    out_image, out_mask = augment_batch(image, mask, torch.Generator().manual_seed(3), intensity_scale=0.0,
                                        intensity_shift=0.0, gamma=0.0, elastic=0.05, p_affine=1.0)
    assert not torch.equal(out_mask, mask)  # it did move
    # The bright region of the transformed image is the transformed mask.
    agreement = ((out_image > 0) == (out_mask > 0.5)).float().mean()
    assert agreement > 0.99


def test_everything_off_is_identity():
    image, mask = pairs()
    out_image, out_mask = augment_batch(image, mask, torch.Generator().manual_seed(0), flip=False,
                                        rotate_deg=0, scale=0, translate=0, intensity_scale=0,
                                        intensity_shift=0, gamma=0)
    torch.testing.assert_close(out_image, image, atol=1e-5, rtol=0)
    assert torch.equal(out_mask, mask)


def test_flip_only_mirrors_left_right():
    image, mask = pairs(n=32)
    _, out_mask = augment_batch(image, mask, torch.Generator().manual_seed(0), rotate_deg=0, scale=0,
                                translate=0)
    flipped = [torch.equal(o, m.flip(-1)) and not torch.equal(o, m) for o, m in zip(out_mask, mask)]
    same = [torch.equal(o, m) for o, m in zip(out_mask, mask)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 4 <= sum(flipped) <= 28


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        augment_batch(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.Generator())
