"""Model-specific tests of ``stylegan_lite``.

The registry-wide contract test covers shapes, ranges, determinism and
kill-and-resume; these check what is particular to this model: the condition
reaches both the mapping network and the discriminator, the adaptive
augmentation probability moves with r_t and survives a checkpoint, the
augmentation keeps image and mask aligned, the EMA ramps up, truncation
applies, and sampling without a condition draws training conditions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_slices
from toolkit.plugin import TrainContext
from toolkit.registry import GENERATORS
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint
from toolkit.train.sampling import make_sampler
from toolkit.types import Batch, DataSpec

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(size: int = SIZE, data=None, **overrides):
    cls = GENERATORS.get("stylegan_lite")
    gen = cls(DataSpec(image_size=size), "cpu", **{**cls.tiny, **overrides})
    data = make_slices(n_patients=3, slices_per_patient=6, size=size) if data is None else data
    gen.setup(TrainContext(train=data))
    return gen, data


def test_the_core_feeds_it_training_conditions_and_no_masks():
    """Conditional, not mask-to-image: the core's sampler passes the drawn training rows' conditions, masks None."""
    torch.manual_seed(0)
    gen, data = build()
    seen = []
    sample = gen.sample
    gen.sample = lambda n, cond=None, masks=None, generator=None: seen.append((cond, masks)) or sample(
        n, cond=cond, masks=masks, generator=generator)
    out = make_sampler(gen, data)(5, torch.Generator().manual_seed(7))
    rows = torch.randint(len(data), (5,), generator=torch.Generator().manual_seed(7))  # the sampler's first draw
    (cond, masks), = seen
    assert masks is None and cond is not None and torch.equal(cond, torch.from_numpy(data.cond)[rows])
    assert torch.equal(out.cond, cond)


def test_condition_reaches_mapping_and_discriminator():
    torch.manual_seed(0)
    gen, data = build()
    cond_a = torch.tensor([[0.1, 0.01]]).repeat(4, 1)
    cond_b = torch.tensor([[0.9, 0.08]]).repeat(4, 1)
    # Mapping: same z, different condition -> different w, and different samples.
    z = torch.randn(4, gen.z_dim)
    w_a = gen.g.mapping(z, gen.cond_norm(cond_a))
    w_b = gen.g.mapping(z, gen.cond_norm(cond_b))
    assert not torch.allclose(w_a, w_b)
    gen.eval()
    out_a = gen.sample(4, cond=cond_a, generator=torch.Generator().manual_seed(1))
    out_b = gen.sample(4, cond=cond_b, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out_a.image, out_b.image), "the condition does not change G's output"
    assert torch.equal(out_a.cond, cond_a)
    # Discriminator: the same pairs scored under two conditions get different logits (projection).
    x = torch.cat([out_a.image, out_a.mask * 2 - 1], dim=1)
    with torch.no_grad():
        d_a = gen.d(x, gen.cond_norm(cond_a))
        d_b = gen.d(x, gen.cond_norm(cond_b))
    assert d_a.shape == (4,)
    assert not torch.allclose(d_a, d_b), "the condition does not change D's output"


def test_condition_gradient_reaches_both_embeddings():
    torch.manual_seed(0)
    gen, data = build()
    batch = data.to_batch(np.arange(8))
    gen.train_step(batch, 1)  # no R1 on odd steps with r1_every=2: one plain D and G update
    assert gen.g.mapping.embed.weight.grad is not None and gen.g.mapping.embed.weight.grad.abs().sum() > 0
    assert gen.d.embed[0].weight.grad is not None and gen.d.embed[0].weight.grad.abs().sum() > 0


def test_ada_p_follows_r_t():
    gen, _ = build()
    ada = gen.ada
    ada.observe(torch.ones(8))  # D is sure every real is real: r_t = 1 > 0.6 -> more augmentation
    ada.adjust()
    assert ada.rt == 1.0 and ada.p == pytest.approx(8 / ada.speed_images)
    for _ in range(3):
        ada.observe(-torch.ones(8))  # r_t = -1 < 0.6 -> less augmentation, clamped at 0
        ada.adjust()
    assert ada.rt == -1.0 and ada.p == 0.0
    for _ in range(100):
        ada.observe(torch.ones(8))
        ada.adjust()
    assert ada.p == ada.p_max


def test_ada_state_survives_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    gen, data = build(ada_target=-1.5)  # r_t is always above it: p climbs every step
    batch = data.to_batch(np.arange(8))
    for step in range(5):
        stats = gen.train_step(batch, step)
    gen.ada.observe(torch.ones(3))  # a half-finished interval must come back too
    assert gen.ada.p > 0, "tiny settings should move p within a few steps"
    assert stats["ada_p"] == gen.ada.p and stats["r_t"] == gen.ada.rt
    save_checkpoint({"generator": gen.state_dict()}, tmp_path / "g.pt")
    restored, _ = build(data=data, ada_target=-1.5)
    assert restored.ada.p == 0.0
    restored.load_state_dict(load_checkpoint(tmp_path / "g.pt")["generator"])
    assert restored.ada.state_dict()["p"] == gen.ada.p
    assert restored.ada.rt == gen.ada.rt
    assert (restored.ada.sign_sum, restored.ada.sign_count) == (gen.ada.sign_sum, gen.ada.sign_count)
    assert gen.train_step(batch, 5) == restored.train_step(batch, 5)


def test_augmentation_moves_image_and_mask_together():
    gen, _ = build()
    ada = gen.ada
    ada.p = 1.0  # every transform on every sample
    mask = torch.zeros(6, 1, SIZE, SIZE)
    mask[:, :, 4:14, 6:20] = 1
    same = torch.cat([mask * 2 - 1, mask * 2 - 1], dim=1)  # image channel == mask channel
    out = ada(same)
    # Colour changes only the image channel; geometry is shared: the image channel is an affine
    # function of the mask channel per sample (a*m + b), so it is perfectly correlated with it.
    img, msk = out[:, 0].flatten(1), out[:, 1].flatten(1)
    for i in range(6):
        corr = torch.corrcoef(torch.stack([img[i], msk[i]]))[0, 1]
        assert corr > 0.999
    assert not torch.allclose(out[:, 1], same[:, 1]), "p = 1 left the masks untouched"
    ada.p = 0.0
    assert torch.equal(ada(same), same), "p = 0 must be the identity"


def test_integer_translation_and_flip_are_exact():
    gen, _ = build(ada_ops="xflip,translate")
    ada = gen.ada
    ada.p = 1.0
    x = torch.arange(4 * 2 * SIZE * SIZE, dtype=torch.float32).view(4, 2, SIZE, SIZE)
    out = ada(x)
    assert not torch.equal(out, x)
    assert torch.allclose(out, out.round(), atol=1e-2), "flips and integer shifts must copy pixels exactly"
    # Each output pixel comes from the same sample and the same pixel of both channels.
    assert torch.allclose(out[:, 1] - out[:, 0], torch.full_like(out[:, 0], SIZE * SIZE), atol=1e-2)


def test_ema_ramps_up():
    gen, data = build(ema_half_life_images=1000.0, ema_rampup=0.05)
    # Half-life min(1000, 0.05 x images seen) images; decay 0.5 ** (batch / half-life).
    assert gen.ema.decay_for(images_seen=32, batch_images=32) == pytest.approx(0.5 ** (32 / 1.6))  # ~1e-6: copies G
    assert gen.ema.decay_for(images_seen=1e6, batch_images=32) == pytest.approx(0.5 ** (32 / 1000))
    # Each train_step ramps with the images seen so far, then averages G with that decay.
    torch.manual_seed(0)
    gen, _ = build(data=data, ema_half_life_images=40.0, ema_rampup=0.5)
    batch = data.to_batch(np.arange(8))
    for step, half_life in enumerate((4.0, 8.0, 12.0)):  # min(40, 0.5 x 8 (step + 1))
        before = [p.detach().clone() for p in gen.ema.module.parameters()]
        gen.train_step(batch, step)
        d = 0.5 ** (8 / half_life)
        assert gen.ema.decay == pytest.approx(d)
        for avg, old, new in zip(gen.ema.module.parameters(), before, gen.g.parameters()):
            torch.testing.assert_close(avg, old * d + new.detach() * (1 - d), rtol=1e-6, atol=1e-6)


def test_sampling_without_cond_uses_training_conditions():
    torch.manual_seed(0)
    gen, data = build()
    gen.eval()
    out = gen.sample(10, generator=torch.Generator().manual_seed(0))
    bank = torch.from_numpy(data.cond)
    for row in out.cond:
        assert (bank == row).all(dim=1).any()


def test_truncation_pulls_samples_together():
    torch.manual_seed(0)
    gen, _ = build()
    gen.eval()
    cond = torch.tensor([[0.5, 0.04]]).repeat(6, 1)
    free = gen.sample(6, cond=cond, generator=torch.Generator().manual_seed(2))
    same = gen.sample(6, cond=cond, generator=torch.Generator().manual_seed(2), truncation_psi=1.0)
    tight = gen.sample(6, cond=cond, generator=torch.Generator().manual_seed(2), truncation_psi=0.0)
    assert torch.equal(free.image, same.image)
    assert tight.image.std(dim=0).mean() < free.image.std(dim=0).mean()


def test_diffaug_and_no_augmentation_train():
    # ada_target -1.5 sits below every r_t, so under ADA p climbs by 8 / ada_speed_images (20) each step.
    x = torch.rand(4, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for kind, p in (("ada", 0.4), ("diffaug", 0.0), ("none", 0.0)):
        torch.manual_seed(0)
        gen, data = build(augment=kind, ada_target=-1.5)
        stats = gen.train_step(data.to_batch(np.arange(8)), 0)
        assert np.isfinite(list(stats.values())).all()
        assert gen.ada.p == pytest.approx(p) and stats["ada_p"] == gen.ada.p, kind  # p only moves under ADA
        if kind != "ada":
            assert torch.equal(gen.augment(x), x) == (kind == "none"), kind  # D's input: DiffAugment, or as is


@pytest.mark.parametrize("size", [64, 128])
def test_larger_sizes_build_and_sample(size):
    gen, _ = build(size=size)
    gen.eval()
    out = gen.sample(2, cond=torch.tensor([[0.5, 0.04], [0.2, 0.01]]), generator=torch.Generator().manual_seed(0))
    assert out.image.shape == (2, 1, size, size) and out.mask.shape == (2, 1, size, size)


def test_log_visuals_writes_condition_grids(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    gen, data = build()
    gen.train_step(data.to_batch(np.arange(8)), 0)
    writer = SummaryWriter(str(tmp_path))
    gen.eval()
    with torch.no_grad():
        gen.log_visuals(writer, 1)
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"samples/by_area", "samples/by_position"} <= set(events.Tags()["images"])
    assert {"ada/p", "ada/r_t"} <= set(events.Tags()["scalars"])


def ellipse_pairs(n: int, size: int, seed: int = 0) -> Batch:
    """Bright ellipse glands of random area on a grey body; cond = (random position, area fraction)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    radius = 0.12 + 0.35 * torch.rand(n, 1, 1, generator=g)
    mask = ((xx / radius) ** 2 + (yy / (0.8 * radius)) ** 2 <= 1).float().unsqueeze(1)
    body = ((xx / 0.9) ** 2 + (yy / 0.75) ** 2 <= 1).float()
    image = -1 + 0.8 * body + 0.9 * mask + 0.05 * torch.randn(n, 1, size, size, generator=g)
    cond = torch.stack([torch.rand(n, generator=g), mask.mean(dim=(1, 2, 3))], dim=1)
    return Batch(image.clamp(-1, 1), mask, cond)


@pytest.mark.slow
def test_small_area_conditions_give_smaller_masks():
    """After a short training, asking for small glands gives smaller masks than asking for large ones."""
    torch.manual_seed(0)
    size = 16
    data = ellipse_pairs(256, size)
    cls = GENERATORS.get("stylegan_lite")
    gen = cls(DataSpec(image_size=size), "cpu", z_dim=16, w_dim=32, embed_dim=8, mapping_layers=2,
              g_channels=16, g_max_channels=64, d_channels=16, d_max_channels=64, r1_every=4, ada_interval=4,
              ema_half_life_images=500.0)
    rng = torch.Generator().manual_seed(1)
    for step in range(400):
        rows = torch.randint(len(data), (32,), generator=rng)
        gen.train_step(Batch(data.image[rows], data.mask[rows], data.cond[rows]), step)
    gen.eval()
    areas = data.cond[:, 1]
    small = torch.tensor([[0.5, float(areas.quantile(0.1))]]).repeat(64, 1)
    large = torch.tensor([[0.5, float(areas.quantile(0.9))]]).repeat(64, 1)
    a_small = gen.sample(64, cond=small, generator=torch.Generator().manual_seed(0)).mask.mean()
    a_large = gen.sample(64, cond=large, generator=torch.Generator().manual_seed(0)).mask.mean()
    assert a_small < a_large, (a_small, a_large)
