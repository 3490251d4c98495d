"""Model-specific tests of the ``pix2pix`` mask-to-image generator.

The registry-wide contract test covers shapes, ranges, determinism, state
round trip and kill-and-resume; these check what is particular to pix2pix:
it renders the (deformed) masks it is given and returns them unchanged, two
renderings of one mask clearly differ because of the latent, the
segmentation-consistency term uses a frozen U-Net trained on training
patients only, and TensorBoard gets the renderings grid and diversity number.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.conftest import make_slices
from toolkit.config import ConfigError, validate_section
from toolkit.data.masks import DeformedMasks, RealMasks
from toolkit.nn.unet import UNet
from toolkit.plugin import TrainContext
from toolkit.registry import GENERATORS
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint
from toolkit.types import DataSpec

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data():
    return make_slices(n_patients=3, slices_per_patient=8, size=SIZE)


def build(data, segmenter=None, **overrides):
    torch.manual_seed(0)
    cls = GENERATORS.get("pix2pix")
    gen = cls(DataSpec(image_size=SIZE), "cpu", **{**cls.tiny, **overrides})
    gen.setup(TrainContext(train=data, mask_source=DeformedMasks(data), segmenter=segmenter))
    return gen


def train(gen, data, steps: int):
    out = []
    for step in range(steps):
        rows = (np.arange(8) + 8 * step) % len(data)
        out.append(gen.train_step(data.to_batch(rows), step))
    return out


def test_deformed_masks_are_rendered_and_returned_unchanged(data):
    gen = build(data)
    train(gen, data, 2)
    g = torch.Generator().manual_seed(0)
    masks, cond = DeformedMasks(data).draw(12, g)
    originals, _ = RealMasks(data).draw(12, torch.Generator().manual_seed(0))  # the same rows, undeformed
    with_gland = originals.flatten(1).any(1)
    assert any(not torch.equal(masks[i], originals[i]) for i in torch.nonzero(with_gland).flatten().tolist())
    for i in torch.nonzero(with_gland).flatten().tolist():
        assert ndimage.label(masks[i, 0].numpy(), structure=np.ones((3, 3)))[1] == 1
    given = masks.clone()
    gen.eval()
    out = gen.sample(12, cond=cond, masks=masks, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.mask, given) and torch.equal(out.cond, cond)
    assert out.image.shape == (12, 1, SIZE, SIZE) and out.image.abs().max() <= 1
    # Masks without a condition vector get one: mid-gland position, their own area.
    bare = gen.sample(12, masks=masks, generator=torch.Generator().manual_seed(1))
    assert torch.equal(bare.mask, given) and torch.allclose(bare.cond[:, 1], masks.mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="masks were given"):
        gen.sample(5, masks=masks)


def test_two_renderings_of_one_mask_differ_clearly(data):
    gen = build(data, diversity_weight=5.0, ema_decay=0.0)
    train(gen, data, 15)
    gen.eval()
    masks, cond = DeformedMasks(data).draw(4, torch.Generator().manual_seed(2))
    images = gen.renderings(masks, cond, k=3, generator=torch.Generator().manual_seed(3))
    assert images.shape == (4, 3, 1, SIZE, SIZE)
    varied = gen.same_mask_diversity(images)
    # The same latent twice gives the same image: the spread comes from the latent, not from chance.
    z_fixed = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(4)).expand(3, -1)
    same = torch.stack([gen.render(gen.sampling_net(), masks[:1].expand(3, -1, -1, -1), z_fixed,
                                   cond[:1].expand(3, -1))])
    assert gen.same_mask_diversity(same) < 1e-5
    assert varied > 0.04, f"renderings of one mask barely differ: mean 1 - MS-SSIM {varied:.4f}"
    # And the diversity loss works: training without it leaves renderings closer together.
    plain = build(data, diversity_weight=0.0, ema_decay=0.0)
    train(plain, data, 15)
    plain.eval()
    plain_images = plain.renderings(masks, cond, k=3, generator=torch.Generator().manual_seed(3))
    assert varied > 1.25 * plain.same_mask_diversity(plain_images)


def test_seg_consistency_trains_its_own_frozen_unet_and_adds_a_loss(data):
    base = build(data)
    consistent = build(data, seg_consistency_weight=1.0)
    assert base.segmenter is None and consistent.segmenter is not None
    unet = consistent.segmenter.module
    assert not unet.training and not any(p.requires_grad for p in unet.parameters())
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    a, b = train(base, data, 2), train(consistent, data, 2)
    assert "g_seg" not in a[-1] and "g_seg" in b[-1] and np.isfinite(b[-1]["g_seg"])
    assert a[0]["loss"] != b[0]["loss"]
    consistent.train()  # the loop's train mode never reaches the frozen U-Net
    assert not unet.training
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items()), "the frozen U-Net changed"
    assert "segmenter.module" not in consistent.optimizers() and all(
        p is not q for p in unet.parameters() for q in consistent.opt_g.param_groups[0]["params"])


def test_seg_consistency_uses_the_core_segmenter_when_given(data):
    torch.manual_seed(5)
    core_unet = UNet(1, 1, base_channels=4, depth=2).eval()
    state = {k: v.clone() for k, v in core_unet.state_dict().items()}
    gen = build(data, segmenter=lambda: core_unet, seg_consistency_weight=1.0)
    assert all(torch.equal(a, b) for a, b in zip(gen.segmenter.module.state_dict().values(), state.values()))
    assert gen.segmenter.module is not core_unet  # a copy: the core's network is left alone
    assert "g_seg" in train(gen, data, 1)[0]


def test_the_fallback_unet_holds_out_training_slices_only(data):
    from plugins.generators.pix2pix import holdout_split

    fit, val = holdout_split(data)
    assert set(val.patients()) == set(data.patients()) and set(fit.patients()) == set(data.patients())
    assert len(fit) + len(val) == len(data)
    keys = {(p, i) for p, i in zip(fit.patient, fit.slice_index)}
    assert not keys & {(p, i) for p, i in zip(val.patient, val.slice_index)}


def test_state_round_trip_carries_the_frozen_unet(data, tmp_path):
    gen = build(data, seg_consistency_weight=1.0)
    train(gen, data, 1)
    save_checkpoint({"generator": gen.state_dict()}, tmp_path / "g.pt")
    restored = build(data, segmenter=lambda: UNet(1, 1, base_channels=4, depth=4).eval(), seg_consistency_weight=1.0)
    restored.load_state_dict(load_checkpoint(tmp_path / "g.pt")["generator"])
    for a, b in zip(gen.segmenter.module.state_dict().values(), restored.segmenter.module.state_dict().values()):
        assert torch.equal(a, b)
    torch.manual_seed(1)
    assert gen.train_step(data.to_batch(np.arange(8)), 1) == restored.train_step(data.to_batch(np.arange(8)), 1)


class RecordingWriter:
    def __init__(self):
        self.scalars, self.images = {}, {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = value

    def add_image(self, tag, image, step):
        self.images[tag] = image


def test_log_visuals_writes_the_renderings_grid_and_diversity(data):
    from toolkit.metrics.ssim import ms_ssim
    from toolkit.seg.metrics import dice

    bright = torch.nn.Conv2d(1, 1, 1)  # a segmenter whose answer varies per rendering: pixels above 0.85 are gland
    torch.nn.init.constant_(bright.weight, 10.0)
    torch.nn.init.constant_(bright.bias, -8.5)
    gen = build(data, segmenter=lambda: bright, seg_consistency_weight=1.0, visual_masks=3, visual_renderings=4)
    train(gen, data, 1)
    writer = RecordingWriter()
    gen.eval()
    with torch.no_grad():
        gen.log_visuals(writer, 1)
        # The same masks and latents at every step (seed 12345): 3 masks, 4 renderings each.
        g = torch.Generator().manual_seed(12345)
        masks, cond = gen.mask_source.draw(3, g)
        images = gen.renderings(masks, cond, 4, g)
        pred = (gen.segmenter(images.flatten(0, 1)) > 0).numpy()
    # Diversity: 1 - MS-SSIM averaged over the 6 pairs of renderings of each mask, then over the masks.
    pairs = [1 - float(ms_ssim(images[m, i:i + 1], images[m, j:j + 1])) for m in range(3)
             for i in range(4) for j in range(i + 1, 4)]
    assert writer.scalars["pix2pix/same_mask_1_minus_msssim"] == pytest.approx(np.mean(pairs), rel=1e-5)
    assert writer.scalars["pix2pix/segmenter_dice_on_renderings"] == pytest.approx(
        dice(pred, masks.repeat_interleave(4, 0).numpy()), abs=2e-3)  # pooled over the 12 renderings (+1 smoothed)
    grid = writer.images["pix2pix/mask_to_renderings"]
    assert grid.shape[0] == 3 and grid.shape[1] == 3 * (SIZE + 2) + 2 and grid.shape[2] == 5 * (SIZE + 2) + 2


def test_bad_settings_fail_loudly():
    cls = GENERATORS.get("pix2pix")
    with pytest.raises(ConfigError, match=r"'generator.l1_mode' .*must be one of best, all"):
        validate_section(cls, {"l1_mode": "median"}, "generator")  # the schema, from the signature
    with pytest.raises(ValueError, match="divisible"):
        cls(DataSpec(image_size=SIZE), "cpu", **{**cls.tiny, "depth": 6})


def test_the_quick_config_builds_the_generator():
    from toolkit.config import resolve
    from toolkit.experiment import build_generator

    config = resolve(generator="pix2pix", profile="quick")
    gen = build_generator(config, torch.device("cpu"))
    assert type(gen).__name__ == "Pix2Pix" and gen.seg_consistency_weight == 0.0
    assert config["masks"]["source"] == "deformed_real"
