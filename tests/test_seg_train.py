"""The U-Net, its training loop, prediction stacking, runtime settings, baseline cache and the plot."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch
from test_dice_gain import SIZE, ellipse_patients, make_ctx, noise_set

from toolkit import runtime
from toolkit.nn.unet import UNet
from toolkit.seg.predict import score_patients, stack_volumes
from toolkit.seg.report import per_patient_plot
from toolkit.seg.train import Pool, dice_bce_loss, train_unet
from toolkit.settings import SegSettings

TINY = SegSettings(steps=60, batch_size=8, lr=3e-3, base_channels=8, depth=2, val_every=30, precision="fp32",
                   schedule="constant")


def test_unet_shapes_encode_and_size_check():
    net = UNet(base_channels=4, depth=3)
    x = torch.randn(2, 1, 32, 32)
    assert net(x).shape == (2, 1, 32, 32)
    assert net.encode(x).shape == (2, 32, 4, 4)
    assert net.feature_channels == 32
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 1, 36, 36))
    with pytest.raises(ValueError, match="norm must be one of"):
        UNet(norm="layer")
    for norm in ("instance", "group", "none"):
        assert UNet(base_channels=4, depth=2, norm=norm)(x).shape == (2, 1, 32, 32)


def test_default_unet_size_matches_the_design_budget():
    assert abs(sum(p.numel() for p in UNet().parameters()) - 1.94e6) < 0.02e6


def test_loss_is_small_for_confident_correct_logits():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = dice_bce_loss((target * 2 - 1) * 20, target)
    bad = dice_bce_loss(-(target * 2 - 1) * 20, target)
    assert good < 0.01 < 1.0 < bad


def test_seg_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps"):
        SegSettings(steps=0)
    with pytest.raises(ValueError, match="precision"):
        SegSettings(precision="fp16")


def test_precision_resolution(monkeypatch):
    assert runtime.resolve_precision("fp32", "cpu") is None
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert runtime.resolve_precision("auto", "cpu") is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert runtime.resolve_precision("auto", "cpu") is None
    with pytest.warns(UserWarning, match="slower"):
        assert runtime.resolve_precision("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.resolve_precision("half", "cpu")


def test_reproducible_restores_threads_and_determinism():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with runtime.reproducible(threads + 1) as used:
        assert used == threads + 1 == torch.get_num_threads()
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det
    with pytest.raises(ValueError, match="threads"):
        with runtime.reproducible(0):
            pass


def test_training_learns_and_keeps_the_best_validated_state():
    train, val = ellipse_patients(3, seed=1), ellipse_patients(2, seed=2, prefix="v")
    with runtime.reproducible(1):
        result = train_unet([Pool.of(train)], val, TINY, seed=0)
        again = train_unet([Pool.of(train)], val, TINY, seed=0)
    assert [h[0] for h in result.history] == [30, 60]
    assert result.best_val_dice == max(h[2] for h in result.history) > 0.5
    assert result.best_step in (30, 60)
    assert not result.model.training
    # Bit-for-bit reproducible on CPU.
    for a, b in zip(result.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="validation"):
        train_unet([Pool.of(train)], val.select(np.zeros(len(val), bool)), TINY, seed=0)
    with pytest.raises(ValueError, match="no slices"):
        Pool.of(train.select(np.zeros(len(train), bool)))


def test_prediction_is_stacked_by_slice_index_whatever_the_row_order():
    test = ellipse_patients(2, seed=3, prefix="t")
    rng = np.random.default_rng(0)
    shuffled = test.select(rng.permutation(len(test)))
    # "Predict" the truth itself: stacking must put every slice back in place.
    volumes = stack_volumes(shuffled, shuffled.masks.astype(np.float32))
    for patient, (values, truth) in volumes.items():
        assert np.array_equal(values > 0.5, truth)
        rows = test.patient == patient
        assert np.array_equal(truth, test.masks[rows].astype(bool))


def test_score_patients_reports_each_patient():
    test = ellipse_patients(2, seed=3, prefix="t")
    net = UNet(base_channels=4, depth=2)
    scores = score_patients(net, test)
    assert [s.patient for s in scores] == ["t00", "t01"]
    assert all(0 <= s.dice <= 1 and s.hd95 >= 0 and s.n_slices == 8 for s in scores)


def test_baseline_store_caches_and_encodes(tmp_path):
    seg = SegSettings(steps=4, batch_size=4, base_channels=4, depth=2, val_every=4, precision="fp32", threads=1)
    ctx = make_ctx(tmp_path, noise_set(8, seed=0), seg=seg)
    net = ctx.baselines.model(0)
    assert net.encode(torch.zeros(1, 1, SIZE, SIZE)).shape == (1, 16, SIZE // 4, SIZE // 4)
    files = list((tmp_path / "cache" / "seg_baselines").glob("*.pt"))
    assert len(files) == 1 and ctx.baselines.trained == 1
    assert ctx.baselines.model(0) is net  # memory
    # A fresh context (nothing in memory) loads the same weights from disk.
    fresh = make_ctx(tmp_path, noise_set(8, seed=0), seg=seg)
    again = fresh.baselines.model(0)
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert len(list((tmp_path / "cache" / "seg_baselines").glob("*.pt"))) == 1 and fresh.baselines.trained == 0
    # Another seed or other settings are another baseline.
    fresh.baselines.model(1)
    assert len(list((tmp_path / "cache" / "seg_baselines").glob("*.pt"))) == 2
    other = make_ctx(tmp_path, noise_set(8, seed=0), seg=dataclasses.replace(seg, lr=2e-3))
    other.baselines.model(0)
    assert len(list((tmp_path / "cache" / "seg_baselines").glob("*.pt"))) == 3


def test_per_patient_plot_is_an_rgb_image():
    rgb = per_patient_plot(["a", "b", "c"], np.array([0.2, 0.5, 0.9]), np.array([0.3, 0.4, 0.9]))
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert (rgb != 255).any()
    with pytest.raises(ValueError, match="aligned"):
        per_patient_plot(["a"], np.array([0.1, 0.2]), np.array([0.1]))


def test_bf16_autocast_path_trains_and_predicts():
    # Emulated on CPUs without native bf16 (slow, hence 2 steps): checks dtypes flow end to end.
    train, val = ellipse_patients(2, seed=1), ellipse_patients(1, seed=2, prefix="v")
    config = SegSettings(steps=2, batch_size=4, base_channels=4, depth=2, val_every=2, precision="bf16")
    native = runtime.cpu_supports_bf16()
    with contextlib.nullcontext() if native else pytest.warns(UserWarning, match="slower"):
        result = train_unet([Pool.of(train)], val, config, seed=0)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    scores = score_patients(result.model, val, amp_dtype=torch.bfloat16, channels_last=True)
    assert 0 <= scores[0].dice <= 1


def test_default_threads_follow_the_idle_cores(monkeypatch):
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "machine_threads", lambda: 2)

    def samples(*pairs):
        it = iter(pairs)
        return lambda: next(it)

    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)
    # Both cores idle during the sample: both threads.
    assert runtime.default_threads(sample=samples((0.0, 0.0), (200.0, 200.0))) == 2
    # Another process holds one core: one thread (two would wait on each other, up to 18x slower).
    assert runtime.default_threads(sample=samples((0.0, 0.0), (100.0, 200.0))) == 1
    # Every core busy: still one.
    assert runtime.default_threads(sample=samples((0.0, 0.0), (0.0, 200.0))) == 1
    # Not measurable (no /proc/stat): the machine's cores.
    assert runtime.default_threads(sample=lambda: None) == 2
