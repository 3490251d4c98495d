"""Batched U-Net training (toolkit.seg.batched): the same networks, batches and selection as train_unet, K at once.

Tolerances (measured on this suite's tiny task, 32 x 32, base 4, depth 2, 1 thread, fp32):
- Architecture: a GroupedUNet holding K packed UNets gives each UNet's output to 1e-5 (train and eval mode,
  every norm) and each UNet's gradient to 1e-4 relative; pack -> unpack is exact.
- First step: same initial weights (exactly) and same batch, so the step-1 loss equals train_unet's to 1e-5.
- End of training (30 steps): trajectories can drift apart like two thread counts do (grouped convolutions sum
  in another order); measured gaps in best val Dice were <= 0.001 (history values <= 0.013), the test allows
  0.05 per job and 0.03 for the mean over jobs, so it holds on other CPUs (AVX2 vs AMX kernels) too.
- Rerun: bit-identical (weights, histories, best steps) for the same jobs and thread count.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing

import numpy as np
import pytest
import torch
from test_dice_gain import ellipse_patients, noise_set

from toolkit.nn.unet import UNet
from toolkit.runtime import reproducible
from toolkit.seg.batched import GroupedUNet, Job, grouped_loss, pack_states, train_unets, unpack_state
from toolkit.seg.controls import blur
from toolkit.seg.predict import score_patients, volume_dice
from toolkit.seg.train import Pool, dice_bce_loss, train_unet
from toolkit.settings import SegSettings

TINY = SegSettings(steps=30, batch_size=8, lr=3e-3, base_channels=4, depth=2, val_every=10, precision="fp32",
                   channels_last=True, threads=1)


@pytest.fixture(scope="module")
def data():
    return ellipse_patients(3, seed=1, prefix="train"), ellipse_patients(2, seed=2, prefix="val")


def _jobs(train, synthetic=None):
    pools_aug = [Pool.of(train), Pool.of(synthetic if synthetic is not None else train, share=1.0, name="s")]
    return [Job([Pool.of(train)], 0), Job(pools_aug, 0), Job([Pool.of(train)], 1)]


@pytest.mark.parametrize(("norm", "block"), [("batch", 1), ("instance", 1), ("group", 1), ("none", 1),
                                             ("batch", 3), ("none", 3)])
def test_grouped_unet_is_k_unets(norm, block):
    k = 3
    torch.manual_seed(0)
    nets = [UNet(1, 1, 4, 2, norm) for _ in range(k)]
    grouped = GroupedUNet(k, 1, 1, 4, 2, norm, block=block)
    grouped.load_state_dict(pack_states([n.state_dict() for n in nets], block))
    for i, net in enumerate(nets):  # pack -> unpack is exact
        for key, value in unpack_state(grouped.state_dict(), k, i, block).items():
            assert torch.equal(value, net.state_dict()[key]), key
    x = torch.randn(6, k, 32, 32)
    y = (torch.rand(6, k, 32, 32) > 0.7).float()
    for mode in ("train", "eval"):
        grouped.train(mode == "train")
        out = grouped(x)
        losses = grouped_loss(out, y)
        for i, net in enumerate(nets):
            net.train(mode == "train")
            own = net(x[:, i:i + 1])
            assert torch.allclose(out[:, i:i + 1], own, atol=1e-5), (mode, i)
            assert losses[i].item() == pytest.approx(dice_bce_loss(own, y[:, i:i + 1]).item(), abs=1e-5)
    # Gradients of the summed loss are each model's own gradient.
    grouped.train()
    grouped.zero_grad()
    grouped_loss(grouped(x), y).sum().backward()
    grads = {name: p.grad for name, p in grouped.named_parameters()}
    for i, net in enumerate(nets):
        net.train()
        net.zero_grad()
        dice_bce_loss(net(x[:, i:i + 1]), y[:, i:i + 1]).backward()
        for name, p in net.named_parameters():
            size = p.shape[0]
            mine = grads[name][i * size:(i + 1) * size]
            if mine.dim() == 4 and block > 1:  # the model's own columns; the others' gradient is masked to 0
                b = mine.shape[1] // block
                own_cols = mine[:, (i % block) * b:(i % block + 1) * b]
                others = mine.clone()
                others[:, (i % block) * b:(i % block + 1) * b] = 0
                assert not others.any(), (norm, i, name)
                mine = own_cols
            assert torch.allclose(mine, p.grad, rtol=1e-4, atol=1e-6), (norm, i, name)


def test_first_step_equals_train_unet(data):
    train, val = data
    one = dataclasses.replace(TINY, steps=1, val_every=1)
    jobs = _jobs(train, noise_set(16, seed=5))
    with reproducible(1):
        batched = train_unets(jobs, val, one, grouped=True)
        single = [train_unet(job.pools, val, one, job.seed) for job in jobs]
    for b, s in zip(batched, single):
        assert b.history[0][0] == s.history[0][0] == 1
        assert b.history[0][1] == pytest.approx(s.history[0][1], abs=1e-5)  # same weights, same batch
        assert b.best_val_dice == pytest.approx(s.best_val_dice, abs=0.02)
        for key, value in s.model.state_dict().items():  # one Adam step from the same start
            assert torch.allclose(b.model.state_dict()[key].float(), value.float(), atol=1e-4), key


def test_batched_matches_one_by_one_dice_and_reruns_bit_identical(data):
    train, val = data
    jobs = _jobs(train, noise_set(16, seed=5))
    with reproducible(1):
        batched = train_unets(jobs, val, TINY, grouped=True)
        again = train_unets(jobs, val, TINY, grouped=True)
        single = [train_unet(job.pools, val, TINY, job.seed) for job in jobs]
    # Bit-identical rerun.
    for a, b in zip(batched, again):
        assert (a.best_step, a.best_val_dice, a.history) == (b.best_step, b.best_val_dice, b.history)
        for key, value in a.model.state_dict().items():
            assert torch.equal(value, b.model.state_dict()[key]), key
    # Close to one-by-one training (see the module docstring for the tolerances).
    gaps = [b.best_val_dice - s.best_val_dice for b, s in zip(batched, single)]
    assert max(abs(g) for g in gaps) < 0.05, gaps
    assert abs(np.mean(gaps)) < 0.03, gaps
    assert batched[0].best_val_dice > 0.5  # the real-only seed-0 U-Net learned the ellipses (0.77 here)
    # Same selection logic: validated at val_every and the last step; the first best state is kept.
    for b, s in zip(batched, single):
        assert [h[0] for h in b.history] == [h[0] for h in s.history] == [10, 20, 30]
        dices = [h[2] for h in b.history]
        assert b.best_val_dice == max(dices)
        assert b.best_step == b.history[dices.index(max(dices))][0]


def test_returned_models_are_plain_unets_holding_the_best_state(data):
    train, val = data
    with reproducible(1):
        results = train_unets(_jobs(train), val, TINY, grouped=True)
        for r in results:
            assert type(r.model) is UNet and not r.model.training
            assert r.seconds > 0
            # The returned weights are the selected ones: they score the recorded best val Dice.
            assert volume_dice(r.model, val, channels_last=True) == pytest.approx(r.best_val_dice, abs=1e-3)
            scores = score_patients(r.model, ellipse_patients(2, seed=3, prefix="test"), channels_last=True)
            assert len(scores) == 2 and all(0 <= s.dice <= 1 for s in scores)


def test_edge_cases(data):
    train, val = data
    assert train_unets([], val, TINY) == []
    with pytest.raises(ValueError, match="val is empty"):
        train_unets(_jobs(train), val.select(np.zeros(len(val), bool)), TINY, grouped=True)
    # One job, no channels_last, repeated seeds: still works.
    cfg = dataclasses.replace(TINY, steps=4, val_every=2, channels_last=False)
    with reproducible(1):
        a, b = train_unets([Job([Pool.of(train)], 3), Job([Pool.of(train)], 3)], val, cfg, grouped=True)
        c, d, e = train_unets(_jobs(train), val, cfg, grouped=True, block=3)  # dense blocks of 3 models
        f, g, h = train_unets(_jobs(train), val, cfg, grouped=True)
    assert a.history == b.history  # the same job twice gives the same model twice
    for x, y in zip((c, d, e), (f, g, h)):  # block=3 trains the same models (summation order aside)
        assert x.history[0][1] == pytest.approx(y.history[0][1], abs=1e-5)
    with pytest.raises(ValueError, match="block must divide"):
        GroupedUNet(3, block=2)


def test_cpu_default_is_train_unet_one_by_one(data):
    """grouped=None on a CPU trains the jobs one by one: bit-for-bit train_unet."""
    train, val = data
    cfg = dataclasses.replace(TINY, steps=6, val_every=3)
    jobs = _jobs(train)
    with reproducible(1):
        mine = train_unets(jobs, val, cfg)
        theirs = [train_unet(job.pools, val, cfg, job.seed) for job in jobs]
    for a, b in zip(mine, theirs):
        assert (a.best_step, a.best_val_dice, a.history) == (b.best_step, b.best_val_dice, b.history)
        for key, value in a.model.state_dict().items():
            assert torch.equal(value, b.model.state_dict()[key]), key


# False is also covered end to end (every metric vs the in-process path) in tests/test_dice_gain.py
@pytest.mark.parametrize("grouped", [pytest.param(False, marks=pytest.mark.slow),
                                     pytest.param(True, marks=pytest.mark.slow)])
def test_processes_split_the_jobs_and_match_in_process_chunks(data, grouped):
    """Two spawned processes of one thread each give bit-for-bit the in-process result of each chunk."""
    train, val = data
    cfg = dataclasses.replace(TINY, steps=6, val_every=3)
    jobs = _jobs(train)
    with reproducible(2):
        split = train_unets(jobs, val, cfg, processes=2, grouped=grouped)
    with reproducible(1):
        chunks = (train_unets(jobs[:2], val, cfg, grouped=grouped)
                  + train_unets(jobs[2:], val, cfg, grouped=grouped))
    assert len(split) == 3
    for a, b in zip(split, chunks):
        assert type(a.model) is UNet and not a.model.training
        assert (a.best_step, a.best_val_dice, a.history) == (b.best_step, b.best_val_dice, b.history)
        for key, value in a.model.state_dict().items():
            assert torch.equal(value, b.model.state_dict()[key]), key
    with pytest.raises(ValueError, match="processes"):
        train_unets(jobs, val, cfg, processes=0)


def test_a_failing_worker_is_reported_and_ends_every_worker(data):
    """A worker's exception comes back with its traceback and names the worker; no worker outlives the call."""
    train, val = data
    with pytest.raises(TypeError, match="must pickle.*lambda"):  # refused before any process starts
        train_unets([Job([Pool.of(train, transform=lambda x: x)], 0), Job([Pool.of(train)], 1)], val, TINY,
                    processes=2)
    bad = Job([Pool.of(train, transform=functools.partial(blur, sigma="wide"))], 7)  # fails in the worker
    with reproducible(2), pytest.raises(TypeError) as info:
        train_unets([Job([Pool.of(train)], 0), bad], val, TINY, processes=2)
    assert "raised in segmenter worker 2 of 2 (U-Net seeds [7])" in info.value.__notes__
    assert "Traceback" in str(info.value.__cause__) and "blur" in str(info.value.__cause__)
    assert multiprocessing.active_children() == []
