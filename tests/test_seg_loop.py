"""Segmentation in the loop (``toolkit.nn.seg_loop``, pix2pix's ``seg_loop`` option).

G must get a gradient from the loop when it is on and exactly none when it is
off; the hypergradient must be right (a linear segmenter with an MSE loss,
against a finite difference of a closed-form outer loss); the loop must never
draw a validation or test patient; and a killed and resumed run with the loop
on must continue bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import make_slices
from tests.test_contract import _train as train_as_core
from toolkit.data.masks import DeformedMasks
from toolkit.data.splits import split_patients
from toolkit.nn.seg_loop import hyper_step
from toolkit.plugin import TrainContext
from toolkit.registry import GENERATORS
from toolkit.schema import ConfigError
from toolkit.settings import SplitSettings
from toolkit.train.checkpoint import load_checkpoint
from toolkit.train.loop import checkpoint_path
from toolkit.types import DataSpec

SIZE = 32
LOOP_KEYS = {"loop_inner", "loop_real_before", "loop_real_after", "loop_grad_share", "loop_seg"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data():
    return make_slices(n_patients=3, slices_per_patient=8, size=SIZE)


def build(data, **overrides):
    """Tiny pix2pix, set up as the core sets it up; the global RNG reseeded after building, as the loop does."""
    torch.manual_seed(0)
    cls = GENERATORS.get("pix2pix")
    gen = cls(DataSpec(image_size=SIZE), "cpu", **{**cls.tiny, **overrides})
    gen.setup(TrainContext(train=data, mask_source=DeformedMasks(data)))
    torch.manual_seed(1)
    return gen


# 1. G's gradient from the loop -------------------------------------------------------------------


@pytest.mark.parametrize("order", ["first", "second"])
def test_the_loop_sends_g_a_gradient(data, order):
    gen = build(data, seg_loop=True, seg_loop_order=order)
    params = list(gen.generator_net.parameters())
    out = gen.loop_step(6)
    grads = torch.autograd.grad(out.hyper.surrogate, params, allow_unused=True)
    total = sum(float(g.abs().sum()) for g in grads if g is not None)
    assert total > 0 and all(torch.isfinite(g).all() for g in grads if g is not None)
    assert all(p.grad is None for p in gen.seg_loop.module.parameters()), "the hypergradient must not touch S"


def test_g_gets_exactly_nothing_from_the_loop_when_it_is_off_or_between_loop_steps(data):
    batch = data.to_batch(np.arange(8))
    plain = build(data)
    looped = build(data, seg_loop=True, seg_loop_every=2)
    assert plain.seg_loop is None and "seg_loop" not in plain.state_dict()
    # Step 1 is not a loop step: the same update, the same losses, bit for bit.
    assert plain.train_step(batch, 1) == looped.train_step(batch, 1)
    assert all(torch.equal(p, q) for p, q in zip(plain.generator_net.parameters(),
                                                  looped.generator_net.parameters(), strict=True))
    # Step 2 is: the loop's gradient moves G, and its numbers are logged.
    a, b = plain.train_step(batch, 2), looped.train_step(batch, 2)
    assert not LOOP_KEYS & set(a) and LOOP_KEYS <= set(b)
    assert 0 < b["loop_grad_share"] and np.isfinite(b["loop_real_after"])
    assert any(not torch.equal(p, q) for p, q in zip(plain.generator_net.parameters(),
                                                     looped.generator_net.parameters(), strict=True))


def test_the_loop_segmenter_trains_normally(data):
    gen = build(data, seg_loop=True, seg_loop_every=1)
    before = [p.detach().clone() for p in gen.seg_loop.module.parameters()]
    gen.train_step(data.to_batch(np.arange(8)), 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, gen.seg_loop.module.parameters(), strict=True))
    assert gen.seg_loop.optimizer.state, "S's Adam state is what a resumed run needs"


# 2. The hypergradient against a finite difference -------------------------------------------------


def outer_loss(phi, segmenter, masks, y_syn, x_real, y_real, lr, steps):
    """Closed form: S(x) = x W^T + b, L = mean squared error, ``steps`` SGD steps on (masks @ phi, y_syn)."""
    w, b = segmenter.weight.detach(), segmenter.bias.detach()
    x = masks @ phi
    for _ in range(steps):
        residual = x @ w.T + b - y_syn  # [N, 1]
        grad_w = 2 * residual.T @ x / residual.numel()
        grad_b = 2 * residual.sum(0) / residual.numel()
        w, b = w - lr * grad_w, b - lr * grad_b
    return ((x_real @ w.T + b - y_real) ** 2).mean()


@pytest.mark.parametrize("order,steps", [("second", 1), ("second", 2), ("first", 1)])
def test_the_hypergradient_of_a_linear_segmenter_matches_a_finite_difference(order, steps):
    g = torch.Generator().manual_seed(0)
    segmenter = nn.Linear(5, 1).double()
    with torch.no_grad():
        segmenter.weight.copy_(torch.randn(1, 5, generator=g, dtype=torch.float64))
    phi = torch.randn(4, 5, generator=g, dtype=torch.float64)  # the "generator": image = mask @ phi
    masks, y_syn = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(8, 1, generator=g,
                                                                                   dtype=torch.float64)
    x_real, y_real = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 1, generator=g,
                                                                                     dtype=torch.float64)
    lr, args = 0.1, (segmenter, masks, y_syn, x_real, y_real)
    leaf = phi.clone().requires_grad_(True)
    out = hyper_step(segmenter, masks @ leaf, y_syn, x_real, y_real, F.mse_loss, lr=lr, steps=steps, order=order)
    (analytic,) = torch.autograd.grad(out.surrogate, leaf)
    h, numeric = 1e-6, torch.zeros_like(phi)
    for i in np.ndindex(*phi.shape):
        step = torch.zeros_like(phi)
        step[i] = h
        numeric[i] = (outer_loss(phi + step, *args, lr, steps) - outer_loss(phi - step, *args, lr, steps)) / (2 * h)
    assert out.after == pytest.approx(float(outer_loss(phi, *args, lr, steps)), rel=1e-12)
    assert numeric.abs().max() > 1e-3
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


# 3. Only training patients enter the loop ---------------------------------------------------------


def test_validation_and_test_patients_never_enter_the_loop():
    slices = make_slices(n_patients=8, slices_per_patient=8, size=SIZE, seed=3)
    split = split_patients(slices.patients(), SplitSettings(val_patients=2, test_patients=2))
    train = slices.of_patients(split["train"])
    held_out = set(split["val"]) | set(split["test"])
    assert held_out and not held_out & set(split["train"])
    gen = build(train, seg_loop=True, seg_loop_every=1)
    for step in range(3):
        gen.train_step(train.to_batch(np.arange(8) + 8 * step), step)
    loop = gen.seg_loop
    assert loop.pool_patients() == set(split["train"])  # every training patient, on both sides of the holdout
    assert loop.drawn_patients and loop.drawn_patients <= set(split["train"])
    assert not (loop.drawn_patients | loop.pool_patients()) & held_out


def test_the_outer_pairs_are_held_out_from_the_inner_step(data):
    gen = build(data, seg_loop=True)
    fit_images, held_images = gen.seg_loop.pools["fit"][0], gen.seg_loop.pools["held"][0]
    assert len(fit_images) + len(held_images) == len(data)
    assert not any(torch.equal(h, f) for h in held_images for f in fit_images)
    assert len(gen.seg_loop.masks.real.masks) == len(fit_images)  # the inner masks are deformed fit masks only


# 4. Kill and resume with the loop on ----------------------------------------------------------


def _train(data, run_dir: Path, steps: int, interrupt_at: int | None = None, resume: bool = False):
    """As tests/test_contract.py runs a generator (seed, build, the core's loop), with the loop on."""
    return train_as_core("pix2pix", data, run_dir, steps, interrupt_at, resume, seg_loop=True, seg_loop_every=2)


def _logged(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def _flat(state, prefix=""):
    """Every tensor and number of a nested state dict, by path."""
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _flat(value, f"{prefix}{key}/").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in _flat(value, f"{prefix}{i}/").items()}
    return {prefix: state}


def test_killed_and_resumed_run_with_the_loop_matches_uninterrupted(data, tmp_path):
    _train(data, tmp_path / "straight", steps=6)
    with pytest.raises(KeyboardInterrupt):
        _train(data, tmp_path / "killed", steps=6, interrupt_at=4)
    assert _train(data, tmp_path / "killed", steps=6, resume=True)["resumed_from"] == 3
    straight, resumed = _logged(tmp_path / "straight"), _logged(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert any("loss/loop_real_after" in r for r in straight)
    assert resumed == straight
    a = _flat(load_checkpoint(checkpoint_path(tmp_path / "straight"))["generator"])
    b = _flat(load_checkpoint(checkpoint_path(tmp_path / "killed"))["generator"])
    assert any(k.startswith("seg_loop/") for k in a) and a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key], key


# Settings ---------------------------------------------------------------------------------------


def test_the_schema_refuses_an_unknown_order_and_the_quick_config_keeps_the_loop_off():
    from toolkit.config import resolve

    with pytest.raises(ConfigError, match="seg_loop_order"):
        resolve(generator="pix2pix", profile="quick", overrides=("generator.seg_loop_order=third",))
    with pytest.raises(ConfigError, match="seg_loop_every"):
        resolve(generator="pix2pix", profile="quick", overrides=("generator.seg_loop_every=0",))
    from toolkit.registry import GENERATORS
    from toolkit.schema import plugin_params

    config = resolve(generator="pix2pix", profile="quick")
    # The constructor is the source of defaults: the quick config does not set the loop, and its default is off.
    assert "seg_loop" not in config["generator"] and plugin_params(GENERATORS["pix2pix"])["seg_loop"][1] is False
