"""``vae``: a convolutional VAE of (image, mask) pairs; samples come with masks.

The course's baseline VAE, made useful for segmentation: the encoder reads
the image and its gland mask as two channels and the decoder writes both
back, so a draw from the prior decodes to an image *and* a matching mask.

The prior used for sampling is, by default (``prior="fitted"``), a
full-covariance Gaussian fitted to the encoder's latents during training
(``toolkit.nn.convvae.FittedPrior``; ex-post density estimation, Ghosh et
al., 2020): on a few dozen slices ``N(0, I)`` has holes the decoder never
saw, and half its samples decoded to mush without a mask.

Loss per step (all per-pixel means, so weights mean the same at any size):

    image_weight * L1(image)                      (or L2: image_loss="l2")
  + mask_weight  * (BCE(mask logits) + soft Dice)
  + beta * warmup(step) * KL(q(z|x) || N(0, I)) / pixels

The KL weight ramps linearly from 0 over ``kl_warmup_steps`` so the decoder
learns to reconstruct before the prior pulls the latents together (Bowman et
al., 2016). VAE samples are smooth and a little blurry; ``vaegan`` sharpens them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from toolkit.nn import losses
from toolkit.nn.convvae import (
    ConvDecoder,
    ConvEncoder,
    FittedPrior,
    decode_pairs,
    draw_latents,
    reparameterize,
)
from toolkit.nn.ema import EMA, ema_or_net
from toolkit.nn.optim import optimizer_step
from toolkit.nn.pairs import encode_pair
from toolkit.nn.rng import RandomSource
from toolkit.plugin import Generator
from toolkit.registry import GENERATORS
from toolkit.types import Batch, DataSpec


@GENERATORS.register("vae")
class VAE(Generator):
    """Convolutional VAE over (image, mask) jointly, sampled from the prior."""

    tiny: ClassVar[dict[str, Any]] = {"base_channels": 4, "max_channels": 16, "z_dim": 8}

    def __init__(
        self,
        spec: DataSpec,
        device: torch.device | str = "cpu",
        *,
        z_dim: int = 32,  # latent dimensions (few: with a few hundred slices, more dims leave holes in the prior)
        base_channels: int = 8,  # channels at full resolution, doubled per down/up-sampling stage
        max_channels: int = 128,  # channel cap at low resolution
        decoder_depth: int = 1,  # 3x3 convolutions per decoder stage (cost grows in proportion)
        lr: float = 1e-3,  # Adam learning rate
        beta: float = 1.0,  # KL weight (per-pixel KL; higher: smoother latent space, blurrier)
        kl_warmup_steps: int = 100,  # steps of linear KL warm-up from 0 to beta
        image_loss: Literal["l1", "l2"] = "l1",  # reconstruction loss of the image channel
        image_weight: float = 1.0,  # weight of the image reconstruction loss
        mask_weight: float = 1.0,  # weight of the mask loss (BCE + soft Dice)
        ema_decay: float = 0.0,  # EMA of the decoder for sampling; 0 disables
        temperature: float = 1.0,  # std of the prior when sampling (< 1: safer, less varied samples)
        prior: Literal["fitted", "standard"] = "fitted",  # sample from a Gaussian fitted to the encoder's latents, or N(0, I)
    ) -> None:
        super().__init__(spec, device)
        self.z_dim = z_dim
        self.beta = beta
        self.kl_warmup_steps = kl_warmup_steps
        self.image_loss_kind = image_loss
        self.image_weight = image_weight
        self.mask_weight = mask_weight
        self.temperature = temperature
        self.prior_kind = prior
        channels = spec.channels + 1
        self.encoder = ConvEncoder(channels, spec.image_size, z_dim, base_channels, max_channels).to(self.device)
        self.decoder = ConvDecoder(spec.channels, spec.image_size, z_dim, base_channels, max_channels, decoder_depth).to(self.device)
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.ema = EMA(self.decoder, ema_decay) if ema_decay > 0 else None
        # Running Gaussian fit of the encoder's latents (kept for either prior; sampled if "fitted").
        self.latent_prior = FittedPrior(z_dim).to(self.device)
        # Own noise source: the reparameterisation noise resumes bit-for-bit.
        self.noise = RandomSource(device=self.device)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        # Encode the pair, draw z, decode both channels.
        with self.autocast():
            mu, logvar = self.encoder(encode_pair(batch.image, batch.mask))
            z = reparameterize(mu.float(), logvar.float(), self.noise.randn(*mu.shape))
            image, logits = self.decoder(z)
        self.latent_prior.update(mu, logvar)
        # Losses in float32: reconstruction per channel, KL with warm-up.
        l_image = losses.image_loss(image.float(), batch.image, self.image_loss_kind)
        l_bce, l_dice = losses.mask_loss(logits.float(), batch.mask)
        l_kl = losses.kl_per_pixel(mu.float(), logvar.float(), batch.image[0, 0].numel())
        kl_weight = self.beta * losses.kl_warmup(step, self.kl_warmup_steps)
        loss = self.image_weight * l_image + self.mask_weight * (l_bce + l_dice) + kl_weight * l_kl
        # Update (and the decoder's EMA).
        optimizer_step(self.optimizer, loss, ema=self.ema, net=self.decoder)
        return {
            "loss": loss.item(), "image": l_image.item(), "mask_bce": l_bce.item(),
            "mask_dice": l_dice.item(), "kl": l_kl.item(), "kl_weight": kl_weight,
        }

    def draw_latents(self, eps: torch.Tensor) -> torch.Tensor:
        """Latents from standard normal ``eps``: scaled by ``temperature``, then mapped by the prior."""
        return draw_latents(eps, self.temperature, self.latent_prior if self.prior_kind == "fitted" else None)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Decode ``n`` draws from the prior (latents drawn on the CPU with ``generator``)."""
        z = self.draw_latents(torch.randn(n, self.z_dim, generator=generator))
        return decode_pairs(ema_or_net(self.ema, self.decoder), z, self.device, self.autocast)
