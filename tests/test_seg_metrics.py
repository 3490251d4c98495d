"""Dice and HD95 against hand-computed cases, including the empty-mask rules."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.seg.metrics import dice, hd95


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.uint8)
    m[top:top + side, left:left + side] = 1
    return m


def test_dice_hand_cases():
    a = square(10, 0, 0, 4)  # 16 pixels
    b = square(10, 0, 2, 4)  # 16 pixels, 8 shared
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(2 * 8 / 32)
    assert dice(a, square(10, 6, 6, 4)) == 0.0


def test_dice_empty_rules():
    empty = np.zeros((5, 5), dtype=bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, square(5, 0, 0, 2)) == 0.0
    assert dice(square(5, 0, 0, 2), empty) == 0.0


def test_dice_rejects_non_binary_and_shape_mismatch():
    with pytest.raises(ValueError, match="binary"):
        dice(np.full((3, 3), 2), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


def test_hd95_shifted_square_is_the_shift():
    a = square(20, 5, 5, 6)
    b = square(20, 5, 8, 6)  # shifted 3 pixels along x
    assert hd95(a, a) == 0.0
    # The far edges are 3 apart; the top/bottom edges overlap partly, so the 95th percentile is 3.
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, b, spacing=(1.0, 0.5)) == pytest.approx(1.5)


def test_hd95_single_points_equals_their_distance():
    a = np.zeros((10, 10), dtype=bool)
    b = np.zeros((10, 10), dtype=bool)
    a[1, 1] = True
    b[4, 5] = True
    assert hd95(a, b) == pytest.approx(5.0)  # 3-4-5 triangle


def test_hd95_empty_rules():
    empty = np.zeros((4, 6, 8), dtype=bool)
    blob = empty.copy()
    blob[1:3, 2:4, 2:5] = True
    assert hd95(empty, empty) == 0.0
    diagonal = np.sqrt(3**2 + 5**2 + 7**2)
    assert hd95(empty, blob) == pytest.approx(diagonal)
    assert hd95(blob, empty) == pytest.approx(diagonal)
    assert hd95(blob, empty, spacing=(2.0, 1.0, 1.0)) == pytest.approx(np.sqrt(6**2 + 5**2 + 7**2))
    with pytest.raises(ValueError, match="spacing needs 3"):
        hd95(blob, blob, spacing=(1.0, 1.0))
