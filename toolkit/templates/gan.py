"""``my_plugin``: a minimal GAN of (image, mask) pairs (a ganseg generator; start yours from here).

Method: a DCGAN-style generator (Radford et al., 2016) maps noise and the slice's condition vector
(``spec.cond_dim`` values: position in the gland, gland area) to an image and a mask; one discriminator
scores image, mask and condition together, so the mask has to fit the image. Non-saturating loss
(Goodfellow et al., 2014): D minimises softplus(-D(real)) + softplus(D(fake)), G minimises
softplus(-D(fake)). D sees G's soft mask (a sigmoid); samples threshold it at 0.5.

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
from toolkit.plugin import Generator, TrainContext
from toolkit.registry import GENERATORS
from toolkit.types import Batch, DataSpec


@GENERATORS.register("my_plugin")
class MyPlugin(Generator):
    """Minimal conditional GAN of (image, mask) pairs, non-saturating loss (new-plugin --template gan)."""

    tiny: ClassVar[dict[str, Any]] = {"latent_dim": 8, "width": 8}  # tests and the smoke profile
    conditional: ClassVar[bool] = True  # uses batch.cond and sample(cond=...)

    def __init__(
        self, spec: DataSpec, device: torch.device | str = "cpu", *,
        latent_dim: int = 64,  # length of the noise vector
        width: int = 64,  # channels at 4 x 4, halved per doubling of the resolution (at least 8)
        lr: float = 2e-4,  # Adam learning rate of both networks
    ) -> None:
        super().__init__(spec, device)
        self.latent_dim, c, k = latent_dim, spec.channels, spec.cond_dim
        chans = [max(8, width >> i) for i in range(spec.image_size.bit_length() - 2)]  # 4 x 4 ... image_size
        g: list[nn.Module] = [nn.Linear(latent_dim + k, chans[0] * 16), nn.Unflatten(1, (chans[0], 4, 4))]
        for a, b in zip(chans, chans[1:]):
            g += [nn.BatchNorm2d(a), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(a, b, 3, padding=1)]
        g += [nn.BatchNorm2d(chans[-1]), nn.ReLU(), nn.Conv2d(chans[-1], c + 1, 3, padding=1)]
        d: list[nn.Module] = [nn.Conv2d(c + 1 + k, chans[-1], 3, padding=1), nn.LeakyReLU(0.2)]
        for a, b in zip(chans[::-1], chans[::-1][1:]):
            d += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        d += [nn.Flatten(), nn.Linear(chans[0] * 16, 1)]
        self.g, self.d = nn.Sequential(*g).to(self.device), nn.Sequential(*d).to(self.device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=lr, betas=(0.5, 0.999))
        self.noise = RandomSource(device=self.device)  # training noise, saved with the checkpoint
        self.train_cond: torch.Tensor | None = None  # the training slices' conditions [N, K], from setup()

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.train_cond = torch.from_numpy(ctx.train.cond).float().reshape(len(ctx.train), -1)

    def _generate(self, z: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.g(torch.cat([z, cond], 1)).float()
        return torch.tanh(out[:, :-1]), out[:, -1:]  # image in [-1, 1], mask logits

    def _critic(self, image: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        maps = cond[:, :, None, None].expand(-1, -1, *image.shape[-2:])  # cond [N, K] as K constant maps
        return self.d(torch.cat([image, mask, maps], 1)).float()

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        if batch.cond is None:  # the core's batches always carry it; inventing one would train on a lie
            raise ValueError("my_plugin is conditional: train_step needs batch.cond [N, spec.cond_dim]")
        n, cond = len(batch), batch.cond
        with self.autocast():
            image, logits = self._generate(self.noise.randn(n, self.latent_dim), cond)
            real = self._critic(batch.image, batch.mask, cond)
            fake = self._critic(image.detach(), torch.sigmoid(logits).detach(), cond)
            d_loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        with self.autocast():
            g_loss = F.softplus(-self._critic(image, torch.sigmoid(logits), cond)).mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return {"d": d_loss.item(), "g": g_loss.item()}

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None, masks: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> Batch:
        if cond is None:  # as the core's sampler does: conditions of real training slices (the contract);
            if self.train_cond is None:  # never zeros or other made-up values, which no real slice has
                raise RuntimeError("my_plugin: sample() without cond needs setup(ctx) (training conditions)")
            cond = self.train_cond[torch.randint(len(self.train_cond), (n,), generator=generator)]
        cond = cond.cpu().float()
        z = torch.randn(n, self.latent_dim, generator=generator)
        image, logits = self._generate(z.to(self.device), cond.to(self.device))
        return Batch(image.cpu(), (logits > 0).float().cpu(), cond)
