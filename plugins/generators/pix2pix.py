"""``pix2pix``: a mask-to-image GAN that renders varied images for one gland mask.

The split of the problem into "make a mask, then render it" is the recipe
with the strongest published evidence for small medical data (Shin et al.,
2018; brainSPADE, Fernandez et al., 2022; GenSeg, Zhang et al., Nature
Communications 2025). The renderer is pix2pix (Isola et al., CVPR 2017,
"Image-to-Image Translation with Conditional Adversarial Networks"): a U-Net
``G`` from the mask to the image, judged by a PatchGAN ``D`` on (mask, image)
pairs, plus an L1 term towards the real image of the mask. The masks it
renders come from the core's mask source (``masks.source``: deformed real
masks by default, the real masks, or another run's masks); ``sample`` returns
exactly the masks it rendered.

Plain pix2pix makes nearly the same image every time it sees a mask (its
dropout noise is ignored, Isola et al. section 3.1), which adds little new
data. Here the variety is built in:

- **A real latent.** ``z ~ N(0, I)`` (and the condition vector: slice
  position, gland area) goes through a small mapping MLP to a style vector
  that (a) is projected to a coarse spatial map concatenated at the U-Net's
  bottleneck, so the layout around the gland can change, and (b) modulates
  every decoder stage by FiLM / AdaIN (per-channel scale and shift after an
  instance norm; Perez et al., AAAI 2018; Huang and Belongie, ICCV 2017), so
  contrast and texture can change.
- **A diversity-sensitive loss.** Each real mask is rendered twice, with
  ``z1`` and ``z2``; the generator is rewarded for making the two images
  differ in proportion to the latent distance (Yang et al., ICLR 2019,
  "Diversity-Sensitive Conditional GANs"; the ratio is Mao et al., CVPR 2019,
  "Mode Seeking GANs"), clipped at ``diversity_tau`` so it cannot win by noise:
  ``-min(mean|G(m, z1) - G(m, z2)| / mean|z1 - z2|, tau)``.
- **L1 on the better of the two renderings.** An L1 term towards the one
  real image of a mask pulls every rendering to the same conditional mean,
  which is exactly the collapse above. Applying it to the closer of the two
  renderings only (winner-takes-all, Rupprecht et al., ICCV 2017, "Learning
  in an Uncertain World") keeps one rendering faithful and leaves the other
  free to differ (``l1_mode: best``; ``all`` is the classic loss).

Each step also renders ``source_fraction`` x batch masks from the mask
source (deformed real masks by default): these have no real image, so they
get the adversarial (and segmentation-consistency) terms only, and G is
trained on the kind of masks it will be asked to render.

**Segmentation consistency** (``seg_consistency_weight`` > 0; off by
default): a frozen U-Net trained on the real training patients only segments
each rendering, and BCE + soft Dice against the input mask pushes G to put
the gland where the mask says. The U-Net is the core's cached baseline
(``TrainContext.segmenter``) when the core provides one; otherwise this
plugin trains a small one on the training patients, holding out every
fourth slice of each training patient for model selection (never a
validation or test patient), and says so in the log. Its weights are part of
the state dict, so a resumed run uses exactly the same network.

**Segmentation in the loop** (``seg_loop: true``; off by default; GenSeg,
Zhang et al., 2025): every ``seg_loop_every`` steps a small segmenter S takes a
differentiable SGD step on G's renderings of deformed real masks, and G gets
the gradient of the stepped S's loss on held-out real *training* slices
(``toolkit.nn.seg_loop``): G is rewarded for pairs that teach S something that
holds on real data, not only for images that show their mask. S also trains
normally on real plus rendered pairs; it, its optimizer and its random stream
are in the state dict.

D is the spectral-norm PatchGAN of ``toolkit.nn.patchgan`` (Miyato et al.,
ICLR 2018) with DiffAugment on all of its inputs (Zhao et al., NeurIPS 2020),
hinge loss by default; Adam with betas (0.5, 0.999) as in DCGAN/pix2pix.
Samples come from an EMA of G's weights (Yazici et al., ICLR 2019).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import make_grid

from toolkit.data.masks import DeformedMasks, mask_condition
from toolkit.data.slices import SliceSet
from toolkit.metrics.ssim import ms_ssim
from toolkit.nn import losses
from toolkit.nn.consistency import FrozenSegmenter, consistency_loss
from toolkit.nn.diffaug import DiffAugment
from toolkit.nn.ema import EMA, ema_or_net
from toolkit.nn.optim import frozen, optimizer_step
from toolkit.nn.pairs import encode_pair
from toolkit.nn.patchgan import PatchGAN
from toolkit.nn.rng import RandomSource
from toolkit.nn.seg_loop import LoopStep, SegLoop, holdout_split
from toolkit.plugin import Generator, TrainContext
from toolkit.registry import GENERATORS
from toolkit.schema import NonNegativeFloat, PositiveFloat, PositiveInt
from toolkit.seg.train import Pool, dice_bce_loss, train_unet
from toolkit.settings import SegSettings
from toolkit.train.visuals import overlay
from toolkit.types import Batch, DataSpec

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)  # "plugins...": the run log picks it up

#: Slice position used for masks given to ``sample`` without a condition vector (mid-gland).
DEFAULT_POSITION = 0.5


# The generator network ---------------------------------------------------------------------


class FiLM(nn.Module):
    """Instance norm, then a per-channel scale and shift predicted from the style vector (AdaIN)."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.to_scale_shift = nn.Linear(style_dim, 2 * channels)
        nn.init.zeros_(self.to_scale_shift.bias)  # scale 1, shift 0 on average; the weights let z matter from the start

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(style)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class UpStage(nn.Module):
    """Nearest 2x upsampling, concatenation with the skip, 3x3 conv, FiLM, ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, style_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in + c_skip, c_out, 3, padding=1)
        self.film = FiLM(c_out, style_dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], dim=1)
        return F.relu(self.film(self.conv(x), style))


class MaskToImageUNet(nn.Module):
    """U-Net from a mask (+ latent + condition) to an image in [-1, 1].

    Encoder: a 3x3 conv at full resolution, then strided 4x4 convs (instance
    norm, LeakyReLU 0.2) down to ``image_size / 2**depth``. Bottleneck: the
    style vector projected to a ``latent_channels`` map of that size is
    concatenated before a 3x3 conv. Decoder: :class:`UpStage` per level with
    the encoder's skip, then a 1x1 conv and tanh.

    Args:
        image_channels: output image channels.
        image_size: side of the square input and output.
        z_dim: latent dimensions.
        cond_dim: condition vector length (0: none).
        base_channels: channels at full resolution, doubled per level.
        max_channels: channel cap.
        depth: number of 2x downsamplings.
        style_dim: width of the mapping MLP and the style vector.
        latent_channels: channels of the latent map injected at the bottleneck.
    """

    def __init__(self, image_channels: int, image_size: int, z_dim: int, cond_dim: int, base_channels: int,
                 max_channels: int, depth: int, style_dim: int, latent_channels: int) -> None:
        super().__init__()
        if image_size % 2**depth:
            raise ValueError(f"pix2pix: image_size {image_size} must be divisible by 2**depth = {2**depth}")
        self.z_dim, self.cond_dim = z_dim, cond_dim
        self.bottom = image_size // 2**depth
        self.latent_channels = latent_channels
        widths = [min(base_channels * 2**i, max_channels) for i in range(depth + 1)]
        self.mapping = nn.Sequential(nn.Linear(z_dim + cond_dim, style_dim), nn.LeakyReLU(0.2),
                                     nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2))
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1), nn.InstanceNorm2d(widths[i + 1], affine=True),
                          nn.LeakyReLU(0.2))
            for i in range(depth)
        )
        self.to_latent_map = nn.Linear(style_dim, latent_channels * self.bottom**2)
        self.middle = nn.Conv2d(widths[-1] + latent_channels, widths[-1], 3, padding=1)
        self.middle_film = FiLM(widths[-1], style_dim)
        self.up = nn.ModuleList(UpStage(widths[i + 1], widths[i], widths[i], style_dim) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], image_channels, 1)

    def forward(self, mask: torch.Tensor, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Image [N, C, H, W] for masks [N, 1, H, W] in {0, 1}, latents [N, z_dim], conditions [N, cond_dim]."""
        style = self.mapping(z if not self.cond_dim else torch.cat([z, cond.to(z.dtype)], dim=1))
        x = self.stem(mask * 2.0 - 1.0)
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck itself
        latent_map = self.to_latent_map(style).view(-1, self.latent_channels, self.bottom, self.bottom)
        x = F.relu(self.middle_film(self.middle(torch.cat([x, latent_map], dim=1)), style))
        for stage, skip in zip(self.up, reversed(skips), strict=True):
            x = stage(x, skip, style)
        return torch.tanh(self.head(x))


# The frozen segmenter for segmentation consistency ---------------------------------------


def train_fallback_segmenter(train: SliceSet, steps: int, base_channels: int, device: torch.device) -> nn.Module:
    """A small U-Net on the training patients only, seed 0, model selection on held-out slices of them."""
    fit, val = holdout_split(train)
    config = SegSettings(steps=steps, batch_size=16, base_channels=base_channels, val_every=max(1, steps // 6),
                       channels_last=False)
    with torch.random.fork_rng(devices=[]):  # train_unet seeds torch's global RNG; leave it as it was
        result = train_unet([Pool.of(fit)], val, config, seed=0, device=device)
    log.info(f"pix2pix: trained its own segmentation-consistency U-Net ({steps} steps, base {base_channels}) "
             f"on {len(fit)} training slices, selected on {len(val)} held-out slices of the same training "
             f"patients (val Dice {result.best_val_dice:.3f} at step {result.best_step}): the core gave no "
             "segmenter")
    return result.model


def grad_norm(params: list[torch.Tensor]) -> float:
    """L2 norm of the parameters' current gradients (those without one count as zero)."""
    norms = [p.grad.norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


# The generator ------------------------------------------------------------------------------


@GENERATORS.register("pix2pix")
class Pix2Pix(Generator):
    """Mask-to-image U-Net GAN with a latent, a diversity loss, optional seg consistency or seg in the loop."""

    needs_masks: ClassVar[bool] = True
    conditional: ClassVar[bool] = True
    tiny: ClassVar[dict[str, Any]] = {
        "base_channels": 4, "max_channels": 16, "depth": 3, "z_dim": 4, "style_dim": 16, "latent_channels": 2,
        "d_channels": 4, "d_max_channels": 16, "seg_steps": 4, "seg_base_channels": 4, "seg_loop_base_channels": 4,
    }

    def __init__(
        self,
        spec: DataSpec,
        device: torch.device | str = "cpu",
        *,
        z_dim: int = 16,  # latent dimensions: the source of variety between renderings of one mask
        style_dim: int = 64,  # width of the mapping MLP (latent + condition -> style vector)
        latent_channels: int = 8,  # channels of the latent map concatenated at the bottleneck
        base_channels: int = 12,  # G channels at full resolution, doubled per level
        max_channels: int = 128,  # G channel cap
        depth: int = 4,  # G downsamplings (64 -> 4)
        d_channels: int = 16,  # D channels after its first convolution
        d_max_channels: int = 128,  # D channel cap
        d_patch_size: int = 8,  # side of D's map of patch logits
        lr_g: float = 5e-4,  # Adam learning rate of G
        lr_d: float = 5e-4,  # Adam learning rate of D
        adam_betas: tuple[float, float] = (0.5, 0.999),  # Adam betas of both optimizers
        adv_loss: Literal["hinge", "nonsat"] = "hinge",  # adversarial loss
        adv_weight: float = 1.0,  # weight of G's adversarial loss
        l1_weight: float = 10.0,  # weight of the L1 term towards the real image of a real mask
        l1_mode: Literal["best", "all"] = "best",  # L1 on the closer of the two renderings, or on both
        diversity_weight: float = 1.0,  # weight of the diversity-sensitive loss (0: off)
        diversity_tau: float = 0.2,  # clip of the image-distance / latent-distance ratio
        source_fraction: float = 0.25,  # masks from the mask source rendered per real pair per step (adv + seg only)
        diffaug: str = "color,translation,cutout",  # DiffAugment policy for D's inputs; "none" disables
        ema_decay: float = 0.995,  # EMA of G for sampling; 0 disables
        seg_consistency_weight: float = 0.0,  # weight of BCE + Dice of a frozen U-Net on renderings (0: off)
        seg_steps: int = 300,  # steps of the fallback U-Net when the core gives no segmenter
        seg_base_channels: int = 8,  # width of the fallback U-Net
        visual_masks: int = 6,  # masks in the TensorBoard grid of several renderings per mask
        visual_renderings: int = 4,  # renderings per mask in that grid and the diversity number
        seg_loop: bool = False,  # segmentation in the loop (GenSeg): G learns from what a segmenter learns from it
        seg_loop_every: PositiveInt = 8,  # G steps per loop step (one loop step costs ~2.4 plain steps; see the docs)
        seg_loop_weight: NonNegativeFloat = 1.0,  # weight of the loop's hypergradient in G's update
        seg_loop_inner_lr: PositiveFloat = 0.05,  # SGD rate of S's differentiable step(s) on G's pairs
        seg_loop_inner_steps: PositiveInt = 1,  # differentiable S steps per loop step (k)
        seg_loop_order: Literal["first", "second"] = "first",  # hypergradient: finite difference, or exact
        seg_loop_lr: PositiveFloat = 1e-3,  # Adam rate of S's ordinary training on real + synthetic pairs
        seg_loop_base_channels: PositiveInt = 8,  # width of the loop's segmenter S (GroupNorm U-Net, depth 3)
    ) -> None:
        super().__init__(spec, device)
        if source_fraction < 0 or seg_consistency_weight < 0 or diversity_weight < 0:
            raise ValueError("pix2pix: source_fraction, seg_consistency_weight and diversity_weight must be >= 0")
        if visual_renderings < 2:
            raise ValueError(f"pix2pix: visual_renderings must be at least 2, got {visual_renderings}")
        self.z_dim = z_dim
        self.adv_loss_kind = adv_loss
        self.adv_weight = adv_weight
        self.l1_weight = l1_weight
        self.l1_mode = l1_mode
        self.diversity_weight = diversity_weight
        self.diversity_tau = diversity_tau
        self.source_fraction = source_fraction
        self.seg_consistency_weight = seg_consistency_weight
        self.seg_steps = seg_steps
        self.seg_base_channels = seg_base_channels
        self.visual_masks = visual_masks
        self.visual_renderings = visual_renderings
        self.generator_net = MaskToImageUNet(spec.channels, spec.image_size, z_dim, spec.cond_dim, base_channels,
                                             max_channels, depth, style_dim, latent_channels).to(self.device)
        self.discriminator = PatchGAN(spec.channels + 1, spec.image_size, d_channels, d_max_channels,
                                      d_patch_size).to(self.device)
        self.opt_g = torch.optim.Adam(self.generator_net.parameters(), lr=lr_g, betas=tuple(adam_betas))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr_d, betas=tuple(adam_betas))
        self.ema = EMA(self.generator_net, ema_decay) if ema_decay > 0 else None
        # Own random sources (latents, training masks, augmentation) so a resumed run is bit-for-bit the same.
        self.noise = RandomSource(device=self.device)
        self.augment = DiffAugment(diffaug, image_channels=spec.channels, device=self.device)
        # Built in setup() when seg_consistency_weight > 0 (a FrozenSegmenter).
        self.segmenter: FrozenSegmenter | None = None
        # Built last, so G, D and the noise stream start as they do without the loop; pools attach in setup().
        self.seg_loop_every = seg_loop_every
        self.seg_loop_weight = seg_loop_weight
        self.seg_loop = SegLoop(spec, self.device, loss_fn=dice_bce_loss, base_channels=seg_loop_base_channels,
                                lr=seg_loop_lr, inner_lr=seg_loop_inner_lr, inner_steps=seg_loop_inner_steps,
                                order=seg_loop_order) if seg_loop else None

    # Setup: the mask source, and the frozen U-Net for segmentation consistency -----------------

    def setup(self, ctx: TrainContext) -> None:
        """Keep the mask source; give the loop the training slices; with ``seg_consistency_weight`` > 0, get
        or train the frozen U-Net."""
        super().setup(ctx)
        if self.seg_loop is not None:
            # Its own deformed real masks over the fit slices: held-out slices never reach the inner step.
            self.seg_loop.attach(ctx.train, DeformedMasks)
        if self.seg_consistency_weight <= 0 or self.segmenter is not None:
            return
        provided: Callable[[], nn.Module] | None = ctx.segmenter
        if provided is not None:
            module = copy.deepcopy(provided()).to(self.device)  # a copy: the core's network stays untouched
            log.info("pix2pix: segmentation consistency uses the core's real-data baseline U-Net")
        else:
            module = train_fallback_segmenter(ctx.train, self.seg_steps, self.seg_base_channels, self.device)
        self.segmenter = FrozenSegmenter(module.to(self.device).to(memory_format=torch.contiguous_format))

    # Training ------------------------------------------------------------------------------------

    def render(self, net: nn.Module, masks: torch.Tensor, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Images for masks under latents ``z`` (forward pass under the loop's autocast, float32 out)."""
        with self.autocast():
            return net(masks, z, cond).float()

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        n = len(batch)
        mask, cond = batch.mask.float(), batch.cond.float()
        # 1. Render every real mask twice (z1, z2) and some masks from the mask source once.
        n_source = round(n * self.source_fraction) if self.mask_source is not None else 0
        masks, conds = [mask, mask], [cond, cond]
        if n_source:
            source_masks, source_cond = self.mask_source.draw(n_source, self.noise.generator)
            masks.append(source_masks.to(self.device))
            conds.append(source_cond.to(self.device))
        masks, conds = torch.cat(masks), torch.cat(conds)
        z = self.noise.randn(len(masks), self.z_dim)
        fake = self.render(self.generator_net, masks, z, conds)
        fake_pairs = encode_pair(fake, masks)
        real_pairs = encode_pair(batch.image, mask)

        # 2. D step: real pairs against every rendering, all augmented.
        with self.autocast():
            real_aug = self.augment(real_pairs)
            fake_aug = self.augment(fake_pairs.detach())
            d_real = self.discriminator(real_aug)[0].float()
            d_fake = self.discriminator(fake_aug)[0].float()
        d_loss = losses.d_adv_loss(d_real, d_fake, self.adv_loss_kind)
        optimizer_step(self.opt_d, d_loss)

        # 3. G step: adversarial + L1 (better rendering) + diversity (+ segmentation consistency), D fixed.
        with frozen(self.discriminator):
            with self.autocast():
                d_gen = self.discriminator(self.augment(fake_pairs))[0].float()
            l_adv = losses.g_adv_loss(d_gen, self.adv_loss_kind)
            first, second = fake[:n], fake[n:2 * n]
            l1_each = torch.stack([(first - batch.image).abs().flatten(1).mean(1),
                                   (second - batch.image).abs().flatten(1).mean(1)])  # [2, n]
            l_l1 = l1_each.min(0).values.mean() if self.l1_mode == "best" else l1_each.mean()
            image_distance = (first - second).abs().flatten(1).mean(1)
            latent_distance = (z[:n] - z[n:2 * n]).abs().mean(1)
            ratio = image_distance / latent_distance.clamp_min(1e-6)
            l_div = -ratio.clamp(max=self.diversity_tau).mean()
            loss = self.adv_weight * l_adv + self.l1_weight * l_l1 + self.diversity_weight * l_div
            stats: dict[str, float] = {}
            if self.segmenter is not None and self.seg_consistency_weight > 0:
                # One rendering per real mask plus the source masks: the gland must be where the mask says.
                seg_rows = torch.cat([torch.arange(n), torch.arange(2 * n, len(masks))]).to(self.device)
                l_seg = consistency_loss(self.segmenter, fake[seg_rows], masks[seg_rows], self.autocast, dice_bce_loss)
                loss = loss + self.seg_consistency_weight * l_seg
                stats["g_seg"] = l_seg.item()
            # 4. Segmentation in the loop, every seg_loop_every steps: the hypergradient joins G's gradient.
            loop = self.loop_step(n) if self.seg_loop is not None and step % self.seg_loop_every == 0 else None
            self.opt_g.zero_grad(set_to_none=True)
            if loop is not None:
                g_params = list(self.generator_net.parameters())
                (self.seg_loop_weight * loop.hyper.surrogate).backward(inputs=g_params)
                loop_norm = grad_norm(g_params)
            optimizer_step(self.opt_g, loss, ema=self.ema, net=self.generator_net, zero_grad=False)  # onto the loop's
        if loop is not None:
            # The loop's share of G's update: |loop gradient| / |total gradient| (above 1 when they oppose;
            # the step leaves the gradients as they were).
            loop_share = loop_norm / max(grad_norm(g_params), 1e-12)
        stats.update(loss=loss.item(), d_loss=d_loss.item(), d_real=d_real.mean().item(),
                     d_fake=d_fake.mean().item(), g_adv=l_adv.item(), g_l1=l_l1.item(),
                     g_div=l_div.item(), same_mask_l1=image_distance.mean().item())
        if loop is not None:
            # 5. S's ordinary step on real + these renderings (after G's backward, which read S's weights).
            stats.update(loop_inner=loop.hyper.inner, loop_real_before=loop.hyper.before,
                         loop_real_after=loop.hyper.after, loop_grad_share=loop_share,
                         loop_seg=self.seg_loop.train_segmenter(loop.synthetic))
        return stats

    def loop_step(self, n: int) -> LoopStep:
        """The loop's step: ``n`` deformed real masks rendered by G (latents from the loop's own stream)."""

        def render(masks: torch.Tensor, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            z = torch.randn(len(masks), self.z_dim, generator=generator).to(self.device)
            return self.render(self.generator_net, masks, z, cond)

        return self.seg_loop.step(render, n)

    # Sampling ------------------------------------------------------------------------------------

    def sampling_net(self) -> nn.Module:
        return ema_or_net(self.ema, self.generator_net)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Render ``masks`` (returned unchanged) or ``n`` masks drawn from the mask source.

        Latents are drawn on the CPU with ``generator`` after any masks, so the
        result is deterministic given it. Masks given without ``cond`` get a
        mid-gland slice position and their own area fraction.
        """
        if masks is None:
            if self.mask_source is None:
                raise RuntimeError("pix2pix.sample needs masks, or a mask source from setup() to draw them from")
            masks, cond = self.mask_source.draw(n, generator)
        elif len(masks) != n:
            raise ValueError(f"pix2pix.sample: n={n} but {len(masks)} masks were given")
        if cond is None:
            cond = mask_condition(masks, torch.full((n,), DEFAULT_POSITION))
        z = torch.randn(n, self.z_dim, generator=generator)
        image = self.render(self.sampling_net(), masks.to(self.device).float(), z.to(self.device),
                            cond.to(self.device).float())
        return Batch(image.clamp(-1, 1).cpu(), masks.cpu(), cond.cpu())

    @torch.no_grad()
    def renderings(self, masks: torch.Tensor, cond: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        """``k`` renderings of each mask with independent latents: [N, k, C, H, W] on the CPU."""
        n = len(masks)
        repeated = masks.repeat_interleave(k, dim=0)
        out = self.sample(n * k, cond=cond.repeat_interleave(k, dim=0), masks=repeated, generator=generator)
        return out.image.view(n, k, *out.image.shape[1:])

    @staticmethod
    def same_mask_diversity(renderings: torch.Tensor) -> float:
        """Mean pairwise 1 - MS-SSIM between renderings of one mask [N, k, 1, H, W], averaged over masks."""
        _, k = renderings.shape[:2]
        i, j = torch.triu_indices(k, k, offset=1)
        a = renderings[:, i].flatten(0, 1)
        b = renderings[:, j].flatten(0, 1)
        return float((1 - ms_ssim(a.detach().float(), b.detach().float())).mean())

    # TensorBoard -----------------------------------------------------------------------------------

    def log_visuals(self, writer: SummaryWriter, step: int) -> None:
        """A grid of mask -> several renderings, the same-mask diversity, and (if set up) the segmenter's Dice."""
        if self.mask_source is None:
            return
        generator = torch.Generator().manual_seed(12345)  # the same masks and latents at every step
        masks, cond = self.mask_source.draw(self.visual_masks, generator)
        images = self.renderings(masks, cond, self.visual_renderings, generator)
        writer.add_scalar("pix2pix/same_mask_1_minus_msssim", self.same_mask_diversity(images), step)
        k = self.visual_renderings
        tiles = torch.cat([overlay(masks * 2 - 1, masks)[:, None],  # the mask itself, then its renderings
                           overlay(images.flatten(0, 1), masks.repeat_interleave(k, 0)).view(len(masks), k, 3,
                                                                                          *masks.shape[-2:])], 1)
        writer.add_image("pix2pix/mask_to_renderings", make_grid(tiles.flatten(0, 1), nrow=k + 1, padding=2,
                                                                 pad_value=1.0), step)
        if self.segmenter is not None:
            with self.autocast():
                logits = self.segmenter(images.flatten(0, 1).to(self.device)).float()
            pred = (logits > 0).float().cpu()
            target = masks.repeat_interleave(k, 0)
            dice = (2 * (pred * target).sum() + 1) / (pred.sum() + target.sum() + 1)
            writer.add_scalar("pix2pix/segmenter_dice_on_renderings", float(dice), step)
