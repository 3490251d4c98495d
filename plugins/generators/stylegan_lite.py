"""``stylegan_lite``: a small conditional StyleGAN2 with adaptive discriminator augmentation.

Re-implemented from the papers in plain PyTorch (no custom ops, so it runs on
CPU, CUDA and MPS alike); the generic layers (equalised learning rate,
modulated convolution, minibatch std) are in ``toolkit.nn.stylegan_layers``:

- Karras et al., CVPR 2020, "Analyzing and Improving the Image Quality of
  StyleGAN" (StyleGAN2): a mapping network z -> w; a synthesis network that
  starts from a learned 4 x 4 constant and applies 3 x 3 convolutions whose
  weights are *modulated* by a per-layer style (an affine map of w) and
  *demodulated* (rescaled to unit expected output variance), with per-pixel
  noise inputs and skip outputs (toRGB) summed over the resolutions; a
  residual discriminator with a minibatch standard deviation feature;
  non-saturating logistic loss; lazy R1 regularisation (every k steps,
  scaled by k, Adam hyperparameters adjusted accordingly); equalised learning
  rate; style mixing; an exponential moving average of G with ramp-up.
- Karras et al., NeurIPS 2020, "Training Generative Adversarial Networks with
  Limited Data" (ADA): every image D sees, real or fake, in the D and the G
  step, goes through a pipeline of augmentations each applied with
  probability p; p is steered by the overfitting heuristic
  r_t = E[sign(D(real))] towards a target (0.6), adjusted every few steps.
- Miyato & Koyama, ICLR 2018, "cGANs with Projection Discriminator": D's
  logit is ``psi(phi(x)) + <embed(c), phi(x)>``.

What is particular here:

- The pair is generated jointly: the toRGB outputs have the image channel(s)
  and one mask-logit channel; the mask is ``logit > 0`` at sampling. D sees
  (image, 2 * mask - 1), with the mask as probabilities for fakes.
- The condition is the slice condition vector of the data pipeline
  (relative position in the gland's extent, 0 at the first gland slice in the
  canonical, inferior-to-superior order (the apex end) and 1 at the last (the base end);
  gland area fraction), standardised with the training statistics, embedded
  and concatenated to z in the mapping network, and projected in D. So
  ``sample(n, cond=...)`` can ask for apex/base slices or small glands; without
  ``cond`` conditions are drawn from the training slices' conditions.
- The ADA pipeline applies its geometric transforms (x-flip, integer
  translation, isotropic scaling, rotation) to image and mask channels
  through one shared sampling grid, and brightness/contrast to the image only.
  ``augment: diffaug`` uses ``toolkit.nn.diffaug`` instead (fixed policy).
- Everything that moves during training is in ``state_dict``: networks,
  optimizers, EMA, the augmentation probability, r_t and its accumulators, and
  the random sources, so a killed run resumes bit-for-bit.
- Simplifications against the papers (for a small CPU model): bilinear
  up/downsampling instead of FIR-filtered resampling; modulation applied to
  activations rather than a grouped convolution (the same arithmetic,
  StyleGAN2's "non-fused" form); no path-length regulariser; the ADA pipeline
  has the geometric and colour groups only (no filtering, noise or cutout).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.nn import losses
from toolkit.nn.ada import ADA_OPS, AdaptiveAugment
from toolkit.nn.condnorm import CondNorm
from toolkit.nn.convvae import stage_channels
from toolkit.nn.diffaug import DiffAugment
from toolkit.nn.ema import RampedEMA, ema_or_net
from toolkit.nn.optim import frozen, optimizer_step
from toolkit.nn.pairs import decode_pair, encode_pair
from toolkit.nn.rng import RandomSource
from toolkit.nn.stylegan_layers import (
    LRELU_GAIN,
    EqualConv2d,
    EqualLinear,
    ModulatedConv2d,
    minibatch_std,
    normalize_2nd_moment,
)
from toolkit.plugin import Generator, TrainContext
from toolkit.registry import GENERATORS
from toolkit.types import Batch, DataSpec

MASK_PRIOR_LOGIT = -2.0  # initial mask-logit bias of the last toRGB: sigmoid(-2) = 0.12 foreground


def channels_by_side(image_size: int, channels: int, max_channels: int) -> dict[int, int]:
    """Channels per resolution, keyed by the side (``toolkit.nn.convvae.stage_channels``): ``channels`` at full
    resolution, doubled per halving, capped, down to 4 x 4."""
    return {image_size >> i: c for i, c in enumerate(stage_channels(image_size, channels, max_channels))}


# Generator ----------------------------------------------------------------------------------


class MappingNetwork(nn.Module):
    """(z, condition) -> w: pixel-normalised z and condition embedding, concatenated, then an MLP.

    Args:
        z_dim: latent size.
        cond_dim: condition length (already standardised by the caller).
        w_dim: style size.
        embed_dim: size of the condition embedding.
        n_layers: fully connected layers (2-4 here; StyleGAN2 uses 8).
        lr_mul: learning-rate multiplier of the MLP (0.01 in StyleGAN).
    """

    def __init__(self, z_dim: int, cond_dim: int, w_dim: int, embed_dim: int, n_layers: int,
                 lr_mul: float = 0.01) -> None:
        super().__init__()
        self.embed = EqualLinear(cond_dim, embed_dim)
        layers, c_in = [], z_dim + embed_dim
        for _ in range(n_layers):
            layers.append(EqualLinear(c_in, w_dim, lr_mul=lr_mul, activation=True))
            c_in = w_dim
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.embed(cond))], dim=1)
        return self.net(x)


class SynthesisLayer(nn.Module):
    """Modulated 3 x 3 convolution, scaled per-pixel noise, bias, leaky ReLU."""

    def __init__(self, c_in: int, c_out: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, w_dim, 3)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w) + noise.to(x.dtype) * self.noise_strength.to(x.dtype)
        return F.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], 0.2) * LRELU_GAIN


class ToRGB(nn.Module):
    """Modulated 1 x 1 convolution (no demodulation) to the output channels: image(s) + mask logit."""

    def __init__(self, c_in: int, c_out: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, w_dim, 1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.to(x.dtype)[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution: (upsample,) two synthesis layers (one at 4 x 4) and a toRGB skip output."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, out_channels: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.layers = nn.ModuleList(
            [SynthesisLayer(c_out, c_out, w_dim)] if first
            else [SynthesisLayer(c_in, c_out, w_dim), SynthesisLayer(c_out, c_out, w_dim)]
        )
        self.to_rgb = ToRGB(c_out, out_channels, w_dim)
        self.n_ws = len(self.layers) + 1

    def forward(self, x: torch.Tensor, rgb: torch.Tensor | None, ws: torch.Tensor,
                noises: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.first:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], noises[i])
        y = self.to_rgb(x, ws[:, -1])
        if rgb is not None:
            y = y + F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
        return x, y


class SynthesisNetwork(nn.Module):
    """Learned 4 x 4 constant -> blocks up to ``image_size``; the toRGB outputs are summed (skip)."""

    def __init__(self, image_size: int, out_channels: int, w_dim: int, channels: int, max_channels: int) -> None:
        super().__init__()
        chans = channels_by_side(image_size, channels, max_channels)
        self.resolutions = sorted(chans)  # 4, 8, ..., image_size
        self.const = nn.Parameter(torch.randn(chans[4], 4, 4))
        blocks = []
        for res in self.resolutions:
            blocks.append(SynthesisBlock(chans.get(res // 2, chans[4]), chans[res], w_dim, out_channels, res == 4))
        self.blocks = nn.ModuleList(blocks)
        self.n_ws = sum(b.n_ws for b in self.blocks)
        with torch.no_grad():
            self.blocks[-1].to_rgb.bias[-1] = MASK_PRIOR_LOGIT  # start with a small mask, not half the image

    def noise_shapes(self, n: int) -> list[tuple[int, int, int, int]]:
        """Shapes of the per-layer noise inputs for ``n`` samples, in layer order."""
        return [(n, 1, res, res) for res, block in zip(self.resolutions, self.blocks) for _ in block.layers]

    def forward(self, ws: torch.Tensor, noises: list[torch.Tensor]) -> torch.Tensor:
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        rgb, w_at, noise_at = None, 0, 0
        for block in self.blocks:
            x, rgb = block(x, rgb, ws[:, w_at : w_at + block.n_ws], noises[noise_at : noise_at + len(block.layers)])
            w_at, noise_at = w_at + block.n_ws, noise_at + len(block.layers)
        return rgb


class StyleGenerator(nn.Module):
    """Mapping + synthesis in one module, so one EMA covers both."""

    def __init__(self, spec: DataSpec, z_dim: int, w_dim: int, embed_dim: int, mapping_layers: int,
                 channels: int, max_channels: int) -> None:
        super().__init__()
        self.mapping = MappingNetwork(z_dim, spec.cond_dim, w_dim, embed_dim, mapping_layers)
        self.synthesis = SynthesisNetwork(spec.image_size, spec.channels + 1, w_dim, channels, max_channels)
        self.image_channels = spec.channels


# Discriminator ------------------------------------------------------------------------------


class DBlock(nn.Module):
    """Residual D block: 3 x 3 conv, downsample, 3 x 3 conv; 1 x 1 skip on the downsampled input."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(c_in, c_in, 3, activation=True)
        self.conv1 = EqualConv2d(c_in, c_out, 3, activation=True)
        self.skip = EqualConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        x = self.conv1(F.avg_pool2d(self.conv0(x), 2))
        return (x + skip) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """Residual discriminator of (image, mask) pairs, conditional through projection.

    ``D(x, c) = out(phi(x)) + <embed(c), phi(x)> / sqrt(dim)`` with ``phi`` the
    conv trunk plus minibatch std and a fully connected layer at 4 x 4.

    Args:
        in_channels: image channels + 1 mask channel.
        image_size: input side.
        cond_dim: condition length (standardised by the caller).
        channels: channels at full resolution, doubled per halving.
        max_channels: channel cap.
        mbstd_group: group size of the minibatch standard deviation.
    """

    def __init__(self, in_channels: int, image_size: int, cond_dim: int, channels: int, max_channels: int,
                 mbstd_group: int = 4) -> None:
        super().__init__()
        chans = channels_by_side(image_size, channels, max_channels)
        self.from_rgb = EqualConv2d(in_channels, chans[image_size], 1, activation=True)
        self.blocks = nn.Sequential(*[DBlock(chans[res], chans[res // 2]) for res in sorted(chans, reverse=True)
                                      if res > 4])
        c4 = chans[4]
        self.mbstd_group = mbstd_group
        self.conv = EqualConv2d(c4 + 1, c4, 3, activation=True)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, 1)
        self.embed = nn.Sequential(EqualLinear(cond_dim, c4, activation=True), EqualLinear(c4, c4))
        self.feature_dim = c4

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Logits ``[N]``."""
        x = self.blocks(self.from_rgb(x))
        x = self.conv(minibatch_std(x, self.mbstd_group))
        h = self.fc(x.flatten(1))
        projection = (self.embed(cond.to(h.dtype)) * h).sum(dim=1, keepdim=True) / math.sqrt(self.feature_dim)
        return (self.out(h) + projection).squeeze(1)


# The plugin ---------------------------------------------------------------------------------


@GENERATORS.register("stylegan_lite")
class StyleGANLite(Generator):
    """Conditional StyleGAN2-lite of (image, mask) pairs with adaptive discriminator augmentation."""

    conditional: ClassVar[bool] = True
    tiny: ClassVar[dict[str, Any]] = {
        "z_dim": 8, "w_dim": 8, "embed_dim": 4, "mapping_layers": 2, "g_channels": 4, "g_max_channels": 8,
        "d_channels": 4, "d_max_channels": 8, "r1_every": 2, "ada_interval": 1, "ada_speed_images": 20.0,
    }

    def __init__(
        self,
        spec: DataSpec,
        device: torch.device | str = "cpu",
        *,
        z_dim: int = 64,  # latent size
        w_dim: int = 64,  # style size (output of the mapping network)
        embed_dim: int = 16,  # size of the condition embedding fed to the mapping network
        mapping_layers: int = 3,  # fully connected layers of the mapping network (2-4)
        g_channels: int = 8,  # synthesis channels at full resolution, doubled per halving
        g_max_channels: int = 128,  # synthesis channel cap (the 4 x 4 constant has this many)
        d_channels: int = 8,  # discriminator channels at full resolution, doubled per halving
        d_max_channels: int = 128,  # discriminator channel cap
        mbstd_group: int = 4,  # minibatch standard deviation group size
        lr_g: float = 2.5e-3,  # Adam learning rate of G (StyleGAN2's 0.0025)
        lr_d: float = 2.5e-3,  # Adam learning rate of D (before the lazy-R1 adjustment)
        adam_betas: tuple[float, float] = (0.0, 0.99),  # Adam betas of both optimizers (StyleGAN2's)
        r1_gamma: float = 0.1,  # R1 weight gamma (penalty gamma / 2 * |grad D(real)|^2); 0 disables
        r1_every: int = 16,  # lazy R1: apply every this many steps, scaled by it
        style_mixing: float = 0.5,  # probability of mixing two styles (same condition) at a random layer
        ema_half_life_images: float = 2000.0,  # half-life of the EMA of G, in training images; 0: no EMA
        ema_rampup: float = 0.05,  # EMA ramp-up: half-life at most this fraction of the images seen so far
        augment: Literal["ada", "diffaug", "none"] = "ada",  # D's augmentation: adaptive (ADA), DiffAugment, none
        ada_target: float = 0.6,  # target of the overfitting heuristic r_t = E[sign(D(real))]
        ada_interval: int = 4,  # steps between adjustments of the augmentation probability p
        ada_speed_images: float = 5000.0,  # images over which p can move by 1 (ADA's 500k, scaled to short runs)
        ada_p_max: float = 0.8,  # cap of p (higher p lets rotations leak into the samples)
        ada_translate: float = 0.125,  # ADA: largest integer shift, fraction of the side
        ada_rotate_deg: float = 180.0,  # ADA: largest rotation angle, degrees
        ada_ops: str = ",".join(ADA_OPS),  # ADA: the transforms used (subset of xflip,translate,scale,rotate,brightness,contrast)
        diffaug_policy: str = "color,translation,cutout",  # augment: diffaug: the DiffAugment policy
        truncation_psi: float = 1.0,  # sampling: w = c_avg + psi * (w - c_avg) per condition; 1 = off
    ) -> None:
        super().__init__(spec, device)
        if spec.cond_dim < 1:
            raise ValueError("stylegan_lite is conditional: the data spec needs cond_dim >= 1")
        if not 1 <= mapping_layers <= 8:
            raise ValueError(f"stylegan_lite: mapping_layers must be in 1..8, got {mapping_layers}")
        self.z_dim = z_dim
        self.r1_gamma = r1_gamma
        self.r1_every = r1_every
        self.style_mixing = style_mixing
        self.augment_kind = augment
        self.truncation_psi = truncation_psi
        self.image_channels = spec.channels

        self.cond_norm = CondNorm(spec.cond_dim).to(self.device)
        self.g = StyleGenerator(spec, z_dim, w_dim, embed_dim, mapping_layers, g_channels, g_max_channels).to(self.device)
        self.d = Discriminator(spec.channels + 1, spec.image_size, spec.cond_dim, d_channels, d_max_channels,
                               mbstd_group).to(self.device)
        betas = tuple(adam_betas)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr_g, betas=betas, eps=1e-8)
        # Lazy regularisation: D takes r1_every + 1 "steps" per r1_every, so Adam is slowed to match.
        ratio = r1_every / (r1_every + 1) if r1_gamma > 0 and r1_every > 0 else 1.0
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=lr_d * ratio,
                                      betas=(betas[0] ** ratio, betas[1] ** ratio), eps=1e-8)
        self.ema = RampedEMA(self.g, ema_half_life_images, ema_rampup) if ema_half_life_images > 0 else None
        # Own random sources: latents, noise inputs, mixing, augmentation; all checkpointed.
        self.noise = RandomSource(device=self.device)
        self.ada = AdaptiveAugment(spec.channels, ada_target, ada_interval, ada_speed_images, 0.0, ada_p_max,
                                   ada_translate, ada_rotate_deg, ada_ops, self.device)
        self.diffaug = DiffAugment(diffaug_policy if augment == "diffaug" else "none", image_channels=spec.channels,
                                   device=self.device)
        # Training conditions, to sample from when sample() gets no cond (set in setup, else from batches).
        self.cond_bank = torch.zeros(0, spec.cond_dim)
        self.cond_bank_from_setup = False

    # Setup and state ---------------------------------------------------------------------

    def setup(self, ctx: TrainContext) -> None:
        """Keep the training conditions (for sampling without ``cond``) and standardise by them."""
        super().setup(ctx)
        cond = torch.from_numpy(ctx.train.cond).float().reshape(len(ctx.train), -1)
        if len(cond):
            self.cond_bank = cond.clone()
            self.cond_bank_from_setup = True
            self.cond_norm.fit(cond)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["cond_bank"] = self.cond_bank.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        bank = state.pop("cond_bank")
        super().load_state_dict(state)
        if not self.cond_bank_from_setup:
            self.cond_bank = bank.float().cpu()

    # Training ----------------------------------------------------------------------------

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """D's input augmentation: ADA (probability p), DiffAugment, or none."""
        if self.augment_kind == "ada":
            return self.ada(x)
        if self.augment_kind == "diffaug":
            return self.diffaug(x)
        return x

    def mapped_styles(self, net: StyleGenerator, z: torch.Tensor, cond: torch.Tensor, z_mix: torch.Tensor | None = None,
                      cutoff: torch.Tensor | None = None) -> torch.Tensor:
        """Per-layer styles ``[N, n_ws, w_dim]``; with ``z_mix``, layers from ``cutoff`` on use its style."""
        n_ws = net.synthesis.n_ws
        w = net.mapping(z, cond)
        ws = w.unsqueeze(1).expand(-1, n_ws, -1)
        if z_mix is not None and cutoff is not None:
            w2 = net.mapping(z_mix, cond).unsqueeze(1).expand(-1, n_ws, -1)
            layer = torch.arange(n_ws, device=w.device).view(1, n_ws, 1)
            ws = torch.where(layer < cutoff.to(w.device).view(-1, 1, 1), ws, w2)
        return ws

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        n = len(batch)
        if batch.cond is None:
            raise ValueError("stylegan_lite is conditional: batches need cond")
        if not self.cond_bank_from_setup and len(self.cond_bank) < 4096:
            self.cond_bank = torch.cat([self.cond_bank, batch.cond.detach().float().cpu()])[:4096]
        cond = self.cond_norm(batch.cond)
        real = encode_pair(batch.image, batch.mask)

        # 1. Fakes of this step, for the batch's conditions (style mixing on a random share).
        z = self.noise.randn(n, self.z_dim)
        z_mix = self.noise.randn(n, self.z_dim)
        mix = self.noise.rand(n) < self.style_mixing
        cutoff = torch.where(mix.cpu(), self.noise.randint(1, self.g.synthesis.n_ws, (n,)),
                             torch.full((n,), self.g.synthesis.n_ws))
        noises = [self.noise.randn(*shape) for shape in self.g.synthesis.noise_shapes(n)]
        with self.autocast():
            out = self.g.synthesis(self.mapped_styles(self.g, z, cond, z_mix, cutoff), noises).float()
        k = self.image_channels
        fake = encode_pair(out[:, :k], torch.sigmoid(out[:, k:]))

        # 2. D step: logistic loss on augmented real and fake pairs, lazy R1 on the augmented reals.
        do_r1 = self.r1_gamma > 0 and self.r1_every > 0 and step % self.r1_every == 0
        real_aug = self.augment(real).detach().requires_grad_(do_r1)
        fake_aug = self.augment(fake.detach())
        with self.autocast():
            d_real = self.d(real_aug, cond).float()
            d_fake = self.d(fake_aug, cond).float()
        d_loss = losses.d_adv_loss(d_real, d_fake, "nonsat")
        stats: dict[str, float] = {}
        d_total = d_loss
        if do_r1:
            r1 = losses.r1_penalty(d_real, real_aug)
            d_total = d_loss + r1 * (self.r1_gamma / 2) * self.r1_every
            stats["r1"] = r1.item()
        optimizer_step(self.opt_d, d_total)

        # ADA: r_t from this interval's D(real) signs; p moves towards the target after each interval.
        self.ada.observe(d_real)
        if (step + 1) % self.ada.interval == 0:
            self.ada.adjust(update_p=self.augment_kind == "ada")

        # 3. G step: non-saturating loss through the fixed D, same fakes, fresh augmentation; then the EMA of G,
        # with ramp-up (StyleGAN2-ADA's half-life in images).
        if self.ema is not None:
            world = torch.distributed.get_world_size() if torch.distributed.is_available() and \
                torch.distributed.is_initialized() else 1
            self.ema.ramp(images_seen=(step + 1) * n * world, batch_images=n * world)
        with frozen(self.d):
            with self.autocast():
                d_gen = self.d(self.augment(fake), cond).float()
            g_loss = losses.g_adv_loss(d_gen, "nonsat")
            optimizer_step(self.opt_g, g_loss, ema=self.ema, net=self.g)

        stats.update(d_loss=d_loss.item(), g_loss=g_loss.item(), d_real=d_real.mean().item(),
                     d_fake=d_fake.mean().item(), ada_p=self.ada.p, r_t=self.ada.rt,
                     mask_area=((out[:, k:] > 0).float().mean().item()))
        return stats

    # Sampling ----------------------------------------------------------------------------

    def sampling_net(self) -> StyleGenerator:
        return ema_or_net(self.ema, self.g)

    def draw_conditions(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` condition vectors drawn from the training slices' conditions."""
        if len(self.cond_bank) == 0:
            raise RuntimeError("stylegan_lite: no training conditions known; call setup() or pass cond=")
        return self.cond_bank[torch.randint(len(self.cond_bank), (n,), generator=generator)].clone()

    def condition_centre(self, net: StyleGenerator, cond: torch.Tensor, n_z: int = 256) -> torch.Tensor:
        """Mean w of each condition over a fixed set of latents: the centre truncation pulls towards."""
        z = torch.randn(n_z, self.z_dim, generator=torch.Generator().manual_seed(0)).to(self.device)
        centres = [net.mapping(z, c.expand(n_z, -1)).float().mean(dim=0) for c in cond.split(1)]
        return torch.stack(centres)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        truncation_psi: float | None = None,
    ) -> Batch:
        """``n`` pairs for ``cond`` (drawn from the training conditions if None), from the EMA of G.

        Latents and noise inputs are drawn on the CPU with ``generator``;
        ``truncation_psi`` (default: the configured one) < 1 pulls each style
        towards its condition's mean style.
        """
        if cond is None:
            cond = self.draw_conditions(n, generator)
        cond = cond.detach().float().cpu().reshape(n, -1)
        net = self.sampling_net()
        z = torch.randn(n, self.z_dim, generator=generator).to(self.device)
        noises = [torch.randn(*shape, generator=generator).to(self.device) for shape in net.synthesis.noise_shapes(n)]
        psi = self.truncation_psi if truncation_psi is None else truncation_psi
        c = self.cond_norm(cond.to(self.device))
        with self.autocast():
            ws = self.mapped_styles(net, z, c)
            if psi != 1.0:
                centre = self.condition_centre(net, c).to(ws.dtype).unsqueeze(1)
                ws = centre + psi * (ws - centre)
            out = net.synthesis(ws, noises).float()
        k = self.image_channels
        image, mask = decode_pair(out[:, :k], out[:, k:])
        return Batch(image.cpu(), mask.cpu(), cond)

    # TensorBoard -------------------------------------------------------------------------

    def condition_rows(self, column: int, rows: int = 6) -> torch.Tensor:
        """``rows`` training conditions at evenly spaced quantiles of cond[:, column] (gland slices only)."""
        bank = self.cond_bank
        gland = bank[bank[:, 1] > 0] if bank.shape[1] > 1 and bool((bank[:, 1] > 0).any()) else bank
        order = gland[:, column].argsort()
        picks = torch.linspace(0.05, 0.95, rows) * (len(order) - 1)
        return gland[order[picks.round().long()]]

    def log_visuals(self, writer: Any, step: int) -> None:
        """Augmentation scalars and sample grids by condition (rows: area small -> large; position apex -> base).

        Columns share latents and noise, so a column shows one "style" across conditions.
        """
        from toolkit.train.visuals import pair_grid

        writer.add_scalar("ada/p", self.ada.p, step)
        writer.add_scalar("ada/r_t", self.ada.rt, step)
        if len(self.cond_bank) == 0:
            return
        cols = 8
        for name, column in (("area", 1), ("position", 0)):
            if column >= self.cond_bank.shape[1]:
                continue
            rows = self.condition_rows(column)
            cond = rows.repeat_interleave(cols, dim=0)
            # One latent per column: the same generator seed for every row.
            out = [self.sample(cols, cond=row.expand(cols, -1), generator=torch.Generator().manual_seed(step))
                   for row in rows]
            image = torch.cat([o.image for o in out])
            mask = torch.cat([o.mask for o in out])
            writer.add_image(f"samples/by_{name}", pair_grid(image, mask, nrow=cols), step)
            if name == "area":
                asked, got = cond[:, 1], mask.mean(dim=(1, 2, 3))
                if float(asked.std()) > 0 and float(got.std()) > 0:
                    corr = torch.corrcoef(torch.stack([asked, got]))[0, 1]
                    writer.add_scalar("cond/area_asked_vs_sampled_pearson", float(corr), step)
