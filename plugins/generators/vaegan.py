"""``vaegan``: the (image, mask) VAE plus a PatchGAN critic, for sharper samples.

Same encoder and decoder as ``vae`` (``toolkit.nn.convvae``), trained against
a PatchGAN discriminator ``D`` that looks at (image, mask) pairs (Larsen et
al., ICML 2016, "Autoencoding beyond pixels using a learned similarity
metric"). Each step:

1. Encode the real pair, decode its reconstruction and, from fresh prior
   draws (the fitted Gaussian of ``vae``, or ``N(0, I)``), ``prior_fraction``
   times as many prior samples.
2. D step: adversarial loss (hinge by default) of D on DiffAugment-ed real
   pairs against the reconstructions and prior samples.
3. G step (encoder + decoder):

       VAE loss (image L1 + mask BCE + soft Dice + beta * warm-up * KL)
     + mask_tv_weight * total variation of the decoded mask probabilities
     + mask_area_weight * L1 of the mask areas against the real ones
     + fm_weight  * L1 between D's features of real and reconstructed pairs
     + adv_weight * adversarial loss of reconstructions and prior samples
     + seg_weight * BCE + soft Dice of S(decoded image) against its decoded mask

   Feature matching through D rewards edges and texture a pixel loss
   averages away; the adversarial term on *prior* samples trains the decoder
   on exactly what ``sample`` draws, not only on encoded latents.

For small data, real and fake inputs of D are augmented alike with
DiffAugment (Zhao et al., 2020); the two-time-scale rule (Heusel et al.,
2017) gives D a larger learning rate than G. By default D has no spectral
norm and the augmentation is colour only: with spectral norm on every layer
(head included) and cutout + translation on 64 x 64 pairs, this small D
stayed at chance for the whole quick run and taught G nothing
(docs/generators_vaegan_real.md has the diagnosis and numbers). Both, and an
R1 penalty (Mescheder et al., 2018), remain options. D is matching-aware
(``mismatch_weight``, after Reed et al., 2016): real images paired with another
slice's mask are negatives beside the generated pairs, so D has to check that
the gland sits under the mask, not only that each looks real; on the real scans
this raised the one-component share from 0.875 to 0.944 at the same FD.
``mask_tv_weight``
adds the total variation of the decoded mask probabilities (about the
outline length) to G's loss, so extra islands and holes cost. Alone it shrinks
every gland (a curve-shortening flow: a third too small on the real scans), so
``mask_area_weight`` holds the size: each reconstruction's mask area against
its pair's, the prior samples' sorted areas against the batch's area
quantiles (areas 0.054 -> 0.074 of real 0.081). The decoder upsamples bilinearly
(``decoder_upsample``): with nearest-neighbour upsampling D's gradient painted a grid
texture into the gland that the real-trained U-Net reads as background (label
fidelity 0.748 -> 0.791 on 288 real-scan samples). Samples come from an EMA of the
decoder's weights when ``ema_decay`` > 0. The adversarial terms start after
``adv_start_step`` steps, once the VAE draws rough shapes.

``seg_weight`` adds segmentation consistency: a small U-Net ``S``, trained
alongside on the real pairs only (never on generated ones), must find each
decoded mask in its decoded image. The mask is the target and is detached, so
the term redraws the image, not the mask. D judges whether a pair looks real;
S asks the narrower question a downstream segmenter asks, whether the gland
in the image is the one in the mask. S is its own network, not the core's
baseline U-Net (``TrainContext.segmenter``), because that one is the network
``dice_gain`` scores label fidelity with: training against it would grade the
generator with its own teacher. The term starts with the GAN terms; S learns
from step 0. At the default 0.1, on the real scans: label fidelity 0.785 ->
0.831, FD 1.00 -> 0.87, the same Dice gain, about 1.6x the step time.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from toolkit.nn import losses
from toolkit.nn.consistency import bce_dice_loss, consistency_loss
from toolkit.nn.convvae import (
    ConvDecoder,
    ConvEncoder,
    FittedPrior,
    decode_pairs,
    draw_latents,
    reparameterize,
)
from toolkit.nn.diffaug import DiffAugment
from toolkit.nn.ema import EMA, ema_or_net
from toolkit.nn.optim import frozen, optimizer_step
from toolkit.nn.pairs import encode_pair
from toolkit.nn.patchgan import PatchGAN
from toolkit.nn.rng import RandomSource
from toolkit.nn.unet import UNet
from toolkit.plugin import Generator
from toolkit.registry import GENERATORS
from toolkit.types import Batch, DataSpec


def mismatched_pairs(real: torch.Tensor) -> torch.Tensor:
    """Real D inputs with each image given the mask of the pair half a batch away; pairs of two empty masks dropped.

    A matching-aware discriminator (Reed et al., ICML 2016, "Generative Adversarial Text to Image
    Synthesis") that must reject these cannot score a pair by image realism alone: it has to check
    that the gland sits under the mask, and its gradient then asks the generator for the same.
    """
    image, mask = real[:, :-1], real[:, -1:]
    other = mask.roll(shifts=max(1, len(real) // 2), dims=0)
    keep = (mask.flatten(1).amax(1) > -1) | (other.flatten(1).amax(1) > -1)  # -1: background after encode_pair
    return torch.cat([image, other], dim=1)[keep] if len(real) > 1 else real[:0]


@GENERATORS.register("vaegan")
class VAEGAN(Generator):
    """VAE of (image, mask) pairs with a PatchGAN discriminator and feature matching."""

    tiny: ClassVar[dict[str, Any]] = {
        "base_channels": 4, "max_channels": 16, "z_dim": 8, "d_channels": 4, "d_max_channels": 16, "seg_channels": 4,
        "adv_start_step": 0,  # so short tests exercise the GAN terms
    }

    def __init__(
        self,
        spec: DataSpec,
        device: torch.device | str = "cpu",
        *,
        z_dim: int = 32,  # latent dimensions (few: with a few hundred slices, more dims leave holes in the prior)
        base_channels: int = 8,  # generator channels at full resolution, doubled per stage
        max_channels: int = 128,  # generator channel cap
        decoder_depth: int = 1,  # 3x3 convolutions per decoder stage (cost grows in proportion)
        decoder_upsample: Literal["nearest", "bilinear"] = "bilinear",  # the decoder's 2x upsampling (nearest drew a grid texture under D's gradient)
        d_channels: int = 16,  # discriminator channels after its first convolution
        d_max_channels: int = 128,  # discriminator channel cap
        d_patch_size: int = 8,  # side of D's map of patch logits (8: each logit sees ~1/4 of a 64 image)
        d_blur: bool = False,  # low-pass before each of D's strided convolutions (anti-aliased D: no grid texture from its gradient)
        d_spectral_norm: Literal["all", "body", "none"] = "none",  # spectral norm on all of D's convolutions, all but the head, or none (see docs/generators_vaegan_real.md)
        r1_gamma: float = 0.0,  # weight of the R1 penalty on D's gradient at real pairs (Mescheder et al., 2018); 0: off
        lr_g: float = 5e-4,  # Adam learning rate of encoder + decoder
        lr_d: float = 1e-3,  # Adam learning rate of D (TTUR: faster than G)
        adam_betas: tuple[float, float] = (0.5, 0.999),  # Adam betas of both optimizers
        beta: float = 1.0,  # KL weight (per-pixel KL, as in vae)
        kl_warmup_steps: int = 100,  # steps of linear KL warm-up from 0 to beta
        image_loss: Literal["l1", "l2"] = "l1",  # pixel reconstruction loss of the image channel
        image_weight: float = 1.0,  # weight of the pixel reconstruction loss
        mask_weight: float = 1.0,  # weight of the mask loss (BCE + soft Dice)
        mask_tv_weight: float = 4.0,  # weight of the total variation (outline length) of decoded mask probabilities; 0: off
        mask_area_weight: float = 4.0,  # weight of the mask-area match (reconstructions to their pair, prior samples to the batch's area quantiles); 0: off
        fm_weight: float = 1.0,  # weight of D feature matching between real and reconstruction
        adv_weight: float = 0.1,  # weight of the adversarial loss of G
        adv_loss: Literal["hinge", "nonsat"] = "hinge",  # adversarial loss: hinge or non-saturating
        adv_start_step: int = 200,  # steps of plain VAE training before D and the GAN terms start
        mismatch_weight: float = 1.0,  # share of mismatched real pairs (an image with another slice's mask) against fakes in D's fake half (w / (1 + w)); 0: off
        diffaug: str = "color",  # DiffAugment policy for D's inputs (color, translation, cutout); "none" disables
        diffaug_translation: float = 0.125,  # DiffAugment's largest shift, fraction of the image side
        diffaug_cutout: float = 0.5,  # side of DiffAugment's cut-out square, fraction of the image side
        ema_decay: float = 0.995,  # EMA of the decoder for sampling; 0 disables
        temperature: float = 1.0,  # std of the prior when sampling (< 1: safer, less varied samples); training draws from the whole prior
        prior: Literal["fitted", "standard"] = "fitted",  # sample from a Gaussian fitted to the encoder's latents, or N(0, I)
        prior_fraction: float = 0.5,  # prior samples per real pair in each step, for D and the adversarial loss
        seg_weight: float = 0.1,  # weight of the segmentation-consistency loss: the own segmenter S must find each decoded mask in its image; 0: off
        seg_channels: int = 8,  # S's first-level channels (a U-Net trained alongside on the real pairs only)
        seg_depth: int = 3,  # S's downsamplings
        lr_s: float = 1e-3,  # Adam learning rate of S
    ) -> None:
        super().__init__(spec, device)
        self.z_dim = z_dim
        self.beta = beta
        self.kl_warmup_steps = kl_warmup_steps
        self.image_loss_kind = image_loss
        self.image_weight = image_weight
        self.mask_weight = mask_weight
        self.mask_tv_weight = mask_tv_weight
        self.mask_area_weight = mask_area_weight
        self.fm_weight = fm_weight
        self.adv_weight = adv_weight
        self.adv_loss_kind = adv_loss
        self.adv_start_step = adv_start_step
        self.mismatch_weight = mismatch_weight
        self.r1_gamma = r1_gamma
        self.temperature = temperature
        self.prior_kind = prior
        self.prior_fraction = prior_fraction
        self.seg_weight = seg_weight
        size, channels = spec.image_size, spec.channels + 1
        self.encoder = ConvEncoder(channels, size, z_dim, base_channels, max_channels).to(self.device)
        self.decoder = ConvDecoder(spec.channels, size, z_dim, base_channels, max_channels, decoder_depth,
                                   decoder_upsample).to(self.device)
        self.discriminator = PatchGAN(channels, size, d_channels, d_max_channels, d_patch_size,
                                      spectral_norm=d_spectral_norm, blur=d_blur).to(self.device)
        g_params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        self.opt_g = torch.optim.Adam(g_params, lr=lr_g, betas=tuple(adam_betas))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr_d, betas=tuple(adam_betas))
        self.ema = EMA(self.decoder, ema_decay) if ema_decay > 0 else None
        if seg_weight < 0:
            raise ValueError(f"vaegan: seg_weight must be >= 0 (0: off), got {seg_weight}")
        if seg_weight > 0:  # built only when used: checkpoints without it stay loadable
            if size % 2**seg_depth:
                raise ValueError(f"vaegan: seg_depth {seg_depth} needs an image side divisible by {2**seg_depth}, "
                                 f"got {size}; lower seg_depth")
            self.seg_net = UNet(spec.channels, 1, seg_channels, seg_depth, norm="group").to(self.device)
            self.opt_s = torch.optim.Adam(self.seg_net.parameters(), lr=lr_s, betas=tuple(adam_betas))
        # Running Gaussian fit of the encoder's latents (kept for either prior; sampled if "fitted").
        self.latent_prior = FittedPrior(z_dim).to(self.device)
        # Own random sources (latent noise, augmentation) so a resumed run is bit-for-bit the same.
        self.noise = RandomSource(device=self.device)
        self.augment = DiffAugment(diffaug, image_channels=spec.channels, translation_ratio=diffaug_translation,
                                   cutout_ratio=diffaug_cutout, device=self.device)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        n = len(batch)
        real = encode_pair(batch.image, batch.mask)
        use_gan = step >= self.adv_start_step
        # 1. Reconstructions and prior samples in one decoder pass.
        with self.autocast():
            mu, logvar = self.encoder(real)
            mu, logvar = mu.float(), logvar.float()
            self.latent_prior.update(mu, logvar)
            z = torch.cat([reparameterize(mu, logvar, self.noise.randn(n, self.z_dim)),
                           self.draw_latents(self.noise.randn(max(1, round(n * self.prior_fraction)), self.z_dim),
                                             temperature=1.0)])  # the whole prior: temperature is for sampling
            image, logits = self.decoder(z)
        image, logits = image.float(), logits.float()
        fake = encode_pair(image, torch.sigmoid(logits))  # D sees mask probabilities
        recon, prior = fake[:n], fake[n:]

        # 2. D step: real pairs against reconstructions and prior samples, all augmented.
        stats: dict[str, float] = {}
        if use_gan:
            stats.update(self.d_step(real, fake.detach()))
        if self.seg_weight > 0:  # from step 0, so S reads real glands by the time G is held to it
            stats.update(self.seg_step(batch))

        # 3. G step: VAE loss + feature matching + adversarial (+ segmentation consistency), D and S fixed.
        with frozen(self.discriminator, self.seg_net if self.seg_weight > 0 else None):
            l_image = losses.image_loss(image[:n], batch.image, self.image_loss_kind)
            l_bce, l_dice = losses.mask_loss(logits[:n], batch.mask)
            l_kl = losses.kl_per_pixel(mu, logvar, batch.image[0, 0].numel())
            kl_weight = self.beta * losses.kl_warmup(step, self.kl_warmup_steps)
            loss = self.image_weight * l_image + self.mask_weight * (l_bce + l_dice) + kl_weight * l_kl
            if self.mask_tv_weight > 0:  # on reconstructions and prior samples alike
                l_tv = losses.total_variation(torch.sigmoid(logits))
                loss = loss + self.mask_tv_weight * l_tv
                stats["mask_tv"] = l_tv.item()
            if self.mask_area_weight > 0:  # holds the gland's size while the total variation smooths its outline
                l_area = losses.mask_area_loss(torch.sigmoid(logits), batch.mask, paired=n)
                loss = loss + self.mask_area_weight * l_area
                stats["mask_area"] = l_area.item()
            if use_gan:
                with self.autocast():
                    real_aug, recon_aug = self.augment.same(real, recon)  # same transform: features comparable
                    prior_aug = self.augment(prior)
                    with torch.no_grad():
                        _, f_real = self.discriminator(real_aug)
                    d_recon, f_recon = self.discriminator(recon_aug)
                    d_prior, _ = self.discriminator(prior_aug)
                l_fm = losses.feature_matching_loss([f.float() for f in f_real], [f.float() for f in f_recon])
                l_adv = 0.5 * (losses.g_adv_loss(d_recon.float(), self.adv_loss_kind)
                               + losses.g_adv_loss(d_prior.float(), self.adv_loss_kind))
                loss = loss + self.fm_weight * l_fm + self.adv_weight * l_adv
                stats.update(g_fm=l_fm.item(), g_adv=l_adv.item())
            if use_gan and self.seg_weight > 0:
                # The image must show its own mask to a segmenter that learned from real pairs only; the
                # mask is the target (detached), so the gradient changes the image, not the mask.
                l_seg = consistency_loss(self.seg_net, image, torch.sigmoid(logits), self.autocast)
                loss = loss + self.seg_weight * l_seg
                stats["g_seg"] = l_seg.item()
            optimizer_step(self.opt_g, loss, ema=self.ema, net=self.decoder)
        stats.update(loss=loss.item(), image=l_image.item(), mask_bce=l_bce.item(), mask_dice=l_dice.item(),
                     kl=l_kl.item(), kl_weight=kl_weight)
        return stats

    def d_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One update of D on real against fake D inputs (``encode_pair`` pairs), both augmented.

        Returns D's adversarial loss (hinge: 2 at chance, 0 once every patch
        is past the margin), its mean score on real and fake inputs and, with
        ``r1_gamma`` > 0, the R1 penalty.
        """
        real_aug = self.augment(real)
        fake_aug = self.augment(fake)
        if self.r1_gamma > 0:
            real_aug = real_aug.detach().requires_grad_(True)
        with self.autocast():
            d_real = self.discriminator(real_aug)[0].float()
            d_fake = self.discriminator(fake_aug)[0].float()
        d_loss = losses.d_adv_loss(d_real, d_fake, self.adv_loss_kind)
        stats = {"d_loss": d_loss.item(), "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}
        if self.mismatch_weight > 0:
            mismatched = mismatched_pairs(real)
            if len(mismatched):
                mismatched = self.augment(mismatched)
                with self.autocast():
                    d_mismatch = self.discriminator(mismatched)[0].float()
                l_mismatch = losses.d_fake_loss(d_mismatch, self.adv_loss_kind)
                # The negatives share the fake half of the loss (GAN-CLS): added on top, two fake terms
                # against one real would make "everything is fake" (logits -1) D's cheapest answer.
                l_fake = losses.d_fake_loss(d_fake, self.adv_loss_kind)
                w = self.mismatch_weight
                d_loss = (d_loss - l_fake) + (l_fake + w * l_mismatch) / (1 + w)
                stats.update(d_mismatch=d_mismatch.mean().item(), d_mismatch_loss=l_mismatch.item())
        if self.r1_gamma > 0:
            r1 = losses.r1_penalty(d_real, real_aug)
            d_loss = d_loss + 0.5 * self.r1_gamma * r1
            stats["d_r1"] = r1.item()
        optimizer_step(self.opt_d, d_loss)
        return stats

    def seg_step(self, batch: Batch) -> dict[str, float]:
        """One update of the consistency segmenter S on the real pairs of this batch (never on generated ones)."""
        with self.autocast():
            s_logits = self.seg_net(batch.image)
        s_loss = bce_dice_loss(s_logits.float(), batch.mask)
        optimizer_step(self.opt_s, s_loss)
        return {"s_loss": s_loss.item()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """As the base class, with the fix named when only the consistency segmenter differs."""
        has_seg, wants_seg = "seg_net" in state, self.seg_weight > 0
        if has_seg != wants_seg:
            raise KeyError("vaegan checkpoint " + ("has a consistency segmenter (it was trained with seg_weight > 0); "
                                                   "resume with --set generator.seg_weight=<its value>" if has_seg else
                                                   "has no consistency segmenter (trained with seg_weight 0, or "
                                                   "before the option existed); resume with --set generator.seg_weight=0"))
        super().load_state_dict(state)

    def draw_latents(self, eps: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Latents from standard normal ``eps``: scaled by ``temperature`` (default: the sampling one), then mapped by the prior."""
        t = self.temperature if temperature is None else temperature
        return draw_latents(eps, t, self.latent_prior if self.prior_kind == "fitted" else None)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Decode ``n`` prior draws (latents drawn on the CPU with ``generator``), EMA decoder if kept."""
        z = self.draw_latents(torch.randn(n, self.z_dim, generator=generator))
        return decode_pairs(ema_or_net(self.ema, self.decoder), z, self.device, self.autocast)
