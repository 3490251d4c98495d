"""``my_plugin``: a mask-to-image GAN (a ganseg generator; start yours from here).

Method: a small pix2pix-style model (Isola et al., 2017). G paints an image for a gland mask, its
condition (``spec.cond_dim`` values) and a noise map; a patch discriminator scores (image, mask, condition)
with the non-saturating loss (Goodfellow et al., 2014), plus an L1 pull towards the real image of the
same mask. Masks come from the core's mask source (``masks:`` config section, ``self.mask_source``
after ``setup``); ``sample`` returns exactly the masks it was given: labels right by construction.

Use, DIR being this file's folder: ``python cli.py list --plugins DIR``, then
``python cli.py run --generator my_plugin --plugins DIR``; ``GANSEG_PLUGINS=DIR python -m pytest
tests/test_contract.py`` runs the contract test on it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from toolkit.nn.rng import RandomSource
from toolkit.plugin import Generator
from toolkit.registry import GENERATORS
from toolkit.types import Batch, DataSpec


def _act() -> nn.Module:  # the activation of both networks
    return nn.LeakyReLU(0.2)


def _maps(cond: torch.Tensor, size: int) -> torch.Tensor:  # cond [N, K] as K constant maps [N, K, size, size]
    return cond[:, :, None, None].expand(-1, -1, size, size)


@GENERATORS.register("my_plugin")
class MyPlugin(Generator):
    """Mask-to-image GAN: paints images for masks from the mask source (new-plugin --template mask2image)."""

    tiny: ClassVar[dict[str, Any]] = {"width": 8}  # tests and the smoke profile
    needs_masks: ClassVar[bool] = True  # sample() gets masks (and their cond) and returns those masks
    conditional: ClassVar[bool] = True  # uses batch.cond

    def __init__(
        self, spec: DataSpec, device: torch.device | str = "cpu", *,
        width: int = 32,  # channels at full resolution (doubled at half resolution)
        lr: float = 2e-4,  # Adam learning rate of both networks
        l1_weight: float = 10.0,  # weight of the L1 pull towards the real image of the same mask
    ) -> None:
        super().__init__(spec, device)
        self.l1_weight, c, k, w = l1_weight, spec.channels, spec.cond_dim, width
        # G: (mask, cond, noise) -> image, at half resolution in the middle for a wider view.
        g = [nn.Conv2d(k + 2, w, 3, padding=1), _act(), nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), _act(),
             nn.Conv2d(2 * w, 2 * w, 3, padding=2, dilation=2), _act(), nn.Upsample(scale_factor=2),
             nn.Conv2d(2 * w, w, 3, padding=1), _act(), nn.Conv2d(w, c, 3, padding=1), nn.Tanh()]
        d = [nn.Conv2d(c + 1 + k, w, 4, stride=2, padding=1), _act(),  # D: (image, mask, cond) -> logits
             nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), _act(), nn.Conv2d(2 * w, 1, 3, padding=1)]
        self.g, self.d = nn.Sequential(*g).to(self.device), nn.Sequential(*d).to(self.device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=lr, betas=(0.5, 0.999))
        self.noise = RandomSource(device=self.device)  # training noise, saved with the checkpoint

    def _paint(self, mask: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.g(torch.cat([mask, _maps(cond, mask.shape[-1]), noise], 1)).float()

    def _critic(self, image: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.d(torch.cat([image, mask, _maps(cond, mask.shape[-1])], 1)).float()

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        if batch.cond is None:  # the core's batches always carry it; inventing one would train on a lie
            raise ValueError("my_plugin is conditional: train_step needs batch.cond [N, spec.cond_dim]")
        n, size, cond = len(batch), batch.image.shape[-1], batch.cond
        with self.autocast():
            fake = self._paint(batch.mask, cond, self.noise.randn(n, 1, size, size))
            d_loss = F.softplus(-self._critic(batch.image, batch.mask, cond)).mean() + \
                F.softplus(self._critic(fake.detach(), batch.mask, cond)).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        with self.autocast():
            adv = F.softplus(-self._critic(fake, batch.mask, cond)).mean()
            l1 = (fake - batch.image).abs().mean()
        self.opt_g.zero_grad(set_to_none=True)
        (adv + self.l1_weight * l1).backward()
        self.opt_g.step()
        return {"d": d_loss.item(), "g_adv": adv.item(), "l1": l1.item()}

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None, masks: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> Batch:
        if masks is None:  # outside the core's sampler: draw from the mask source the core handed over
            if self.mask_source is None:
                raise RuntimeError("my_plugin: sample() without masks needs setup(ctx) with a mask source")
            masks, cond = self.mask_source.draw(n, generator)  # each mask with its own condition
        if cond is None:  # a condition describes its own mask (its area): a drawn or made-up one would not
            raise ValueError("my_plugin: sample(masks=...) needs their cond (mask_source.draw gives both)")
        noise = torch.randn(n, 1, *masks.shape[-2:], generator=generator)
        image = self._paint(*(x.to(self.device).float() for x in (masks, cond, noise)))
        return Batch(image.cpu(), masks.cpu().float(), cond.cpu().float())
