"""Protocol v2 pieces of the segmenter: the LR schedule, early stopping, feeds (add / pretrain), augmentation levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_dice_gain import ellipse_patients

from toolkit import runtime
from toolkit.data.augment import augment_level
from toolkit.schema import ConfigError
from toolkit.seg.batched import Job, train_unets
from toolkit.seg.train import Feed, Pool, Selection, convergence, draw_batch, feed_loss, lr_at, train_unet
from toolkit.settings import SegSettings

SEG = SegSettings(steps=12, batch_size=4, base_channels=4, depth=2, val_every=4, precision="fp32", threads=1)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    seg = SegSettings(steps=100, lr=1e-3, warmup=0.1)
    lrs = [lr_at(s, seg) for s in range(1, 101)]
    assert lrs[:10] == pytest.approx([1e-3 * s / 10 for s in range(1, 11)])  # linear warm-up to the peak
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then never rises
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[54] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert {lr_at(s, SegSettings(schedule="constant", lr=2e-3)) for s in (1, 50, 200)} == {2e-3}


def test_selection_keeps_the_best_and_stops_after_patience():
    sel = Selection(patience=2)
    assert [sel.update(s, d) for s, d in ((1, 0.5), (2, 0.7), (3, 0.6), (4, 0.7))] == [True, True, False, False]
    assert sel.stopped and (sel.best_step, sel.best_dice) == (2, 0.7)  # a tie is no improvement
    assert not Selection(0).stopped


def test_early_stopping_ends_training_and_keeps_the_best_validated_state():
    train, val = ellipse_patients(2, seed=1), ellipse_patients(2, seed=2, prefix="v")
    seg = SegSettings(steps=400, batch_size=4, base_channels=4, depth=2, val_every=2, patience=1, lr=1e-6,
                      precision="fp32", schedule="constant")
    with runtime.reproducible(1):
        result = train_unet([Pool.of(train)], val, seg, seed=0)
    assert result.steps_done < 400 and result.steps_done == result.history[-1][0]
    assert result.best_val_dice == max(h[2] for h in result.history)
    assert result.best_step == max(result.history, key=lambda h: (h[2], -h[0]))[0]
    assert result.convergence(400)["stopped_early"] == 1.0 and result.convergence(400)["converged"] == 1.0


def test_convergence_flags_a_curve_still_rising_in_its_last_quarter():
    rising = [(s, 0.0, s / 100) for s in range(10, 101, 10)]
    flat = [(s, 0.0, min(s, 50) / 100) for s in range(10, 101, 10)]
    assert convergence(rising, 100, 100, 100)["converged"] == 0.0
    assert convergence(rising, 100, 100, 100)["late_rise"] == pytest.approx(0.3)  # best after step 75 (1.0) - best up to it (0.7)
    assert convergence(flat, 100, 100, 50)["converged"] == 1.0


def _pools():
    real = Pool(np.zeros((5, 16, 16), np.float32), np.zeros((5, 16, 16), np.uint8), name="real")
    synthetic = Pool(np.ones((7, 16, 16), np.float32), np.ones((7, 16, 16), np.uint8), name="synthetic")
    return real, synthetic


def test_add_feed_forwards_a_full_real_batch_plus_the_synthetic_one():
    real, synthetic = _pools()
    feed = Feed((real,), extra=(synthetic,), extra_size=6, extra_weight=0.5)
    seg = SegSettings(batch_size=4, augment="none")
    image, mask = draw_batch(feed, 1, seg, torch.Generator().manual_seed(0))
    assert image.shape[0] == 10 == feed.images_per_step(4)
    assert (image[:4] == 0).all() and (image[4:] == 1).all()  # 4 real, then 6 synthetic
    logits = torch.randn(10, 1, 16, 16)
    from toolkit.seg.train import dice_bce_loss
    expected = dice_bce_loss(logits[:4], mask[:4]) + 0.5 * dice_bce_loss(logits[4:], mask[4:])
    assert feed_loss(logits, mask, feed, 4) == pytest.approx(float(expected))


def test_pretrain_feed_switches_to_real_after_its_steps():
    real, synthetic = _pools()
    feed = Feed((real,), pretrain=(synthetic,), pretrain_steps=3)
    seg = SegSettings(batch_size=4, augment="none")
    g = torch.Generator().manual_seed(0)
    drawn = [float(draw_batch(feed, s, seg, g)[0].mean()) for s in range(1, 7)]
    assert drawn == [1, 1, 1, 0, 0, 0]


def test_feed_refuses_inconsistent_fields():
    real, synthetic = _pools()
    with pytest.raises(ValueError, match="extra"):
        Feed((real,), extra=(synthetic,))
    with pytest.raises(ValueError, match="pretrain"):
        Feed((real,), pretrain_steps=3)


def test_train_unets_counts_the_images_each_feed_forwards():
    train, val = ellipse_patients(2, seed=1), ellipse_patients(1, seed=2, prefix="v")
    real = Pool.of(train)
    add = Feed((real,), extra=(real,), extra_size=2)
    with runtime.reproducible(1):
        plain, added = train_unets([Job([real], 0), Job(add, 0)], val, SEG, processes=1)
        grouped = train_unets([Job([real], 0), Job(add, 0), Job(add, 1)], val, SEG, processes=1, grouped=True)
    assert plain.images_seen == 12 * 4 and added.images_seen == 12 * 6
    assert [r.images_seen for r in grouped] == [48, 72, 72]


@pytest.mark.parametrize("level", ["none", "standard", "strong"])
def test_augmentation_levels_are_deterministic_and_keep_masks_binary(level):
    image = torch.rand(6, 1, 32, 32) * 2 - 1
    mask = (torch.rand(6, 1, 32, 32) > 0.7).float()
    a = augment_level(image, mask, torch.Generator().manual_seed(3), level)
    b = augment_level(image, mask, torch.Generator().manual_seed(3), level)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= {0.0, 1.0} and a[0].min() >= -1 and a[0].max() <= 1
    if level == "none":
        assert torch.equal(a[0], image)


def test_strong_augmentation_changes_more_than_standard():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(64, 1, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(64, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    moved = {level: float((augment_level(image, mask, torch.Generator().manual_seed(1), level)[1] != mask)
                          .float().mean()) for level in ("standard", "strong")}
    assert moved["strong"] > 1.5 * moved["standard"] > 0


def test_augment_setting_reads_old_booleans_and_refuses_unknown_levels():
    assert SegSettings(augment=True).augment == "standard" and SegSettings(augment=False).augment == "none"
    with pytest.raises(ConfigError, match="seg.augment"):
        SegSettings(augment="heavy")
