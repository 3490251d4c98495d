"""``example_vae``: a tiny VAE of (image, mask) pairs (a ganseg generator; start yours from here).

Method: a conditional VAE (Kingma & Welling, 2014; Sohn et al., 2015) over the image and its mask
together: the encoder reads both (and the slice's condition, ``spec.cond_dim`` values) into a Gaussian
posterior, the decoder writes both back from a latent and the condition, so a draw from the prior
N(0, I) decodes to an image *and* its matching mask. Loss per pixel: L1(image) + BCE(mask logits)
+ beta * KL(q(z|x, c) || N(0, I)) / pixels. Samples are smooth and a little blurry; add an adversarial
loss to sharpen them.

Shipped as an installed package: the ``ganseg.generators`` entry point in this
package's ``pyproject.toml`` names this module, so after ``pip install -e
examples/ganseg_example_plugin`` it is listed by ``python cli.py list``, trained with
``python cli.py run --generator example_vae`` and covered by tests/test_contract.py.
(Written by ``python cli.py new-plugin example_vae --template pairs``.)
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


@GENERATORS.register("example_vae")
class ExampleVae(Generator):
    """Tiny conditional VAE of (image, mask) pairs, sampled from the prior (new-plugin --template pairs)."""

    tiny: ClassVar[dict[str, Any]] = {"latent_dim": 8, "width": 8}  # tests and the smoke profile
    conditional: ClassVar[bool] = True  # uses batch.cond and sample(cond=...)

    def __init__(
        self, spec: DataSpec, device: torch.device | str = "cpu", *,
        latent_dim: int = 32,  # latent dimensions
        width: int = 64,  # channels at 4 x 4, halved per doubling of the resolution (at least 8)
        lr: float = 1e-3,  # Adam learning rate
        beta: float = 1.0,  # KL weight (higher: smoother latent space, blurrier samples)
    ) -> None:
        super().__init__(spec, device)
        self.latent_dim, self.beta, c, k = latent_dim, beta, spec.channels, spec.cond_dim
        chans = [max(8, width >> i) for i in range(spec.image_size.bit_length() - 2)]  # 4 x 4 ... image_size
        enc: list[nn.Module] = [nn.Conv2d(c + 1 + k, chans[-1], 3, padding=1), nn.LeakyReLU(0.2)]
        for a, b in zip(chans[::-1], chans[::-1][1:]):
            enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        enc += [nn.Flatten(), nn.Linear(chans[0] * 16, 2 * latent_dim)]
        dec: list[nn.Module] = [nn.Linear(latent_dim + k, chans[0] * 16), nn.Unflatten(1, (chans[0], 4, 4))]
        for a, b in zip(chans, chans[1:]):
            dec += [nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2), nn.Conv2d(a, b, 3, padding=1)]
        dec += [nn.LeakyReLU(0.2), nn.Conv2d(chans[-1], c + 1, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc).to(self.device), nn.Sequential(*dec).to(self.device)
        self.opt = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=lr)
        self.noise = RandomSource(device=self.device)  # reparameterisation noise, saved with the checkpoint
        self.train_cond: torch.Tensor | None = None  # the training slices' conditions [N, K], from setup()

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.train_cond = torch.from_numpy(ctx.train.cond).float().reshape(len(ctx.train), -1)

    def _decode(self, z: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decoder(torch.cat([z, cond], 1)).float()
        return torch.tanh(out[:, :-1]), out[:, -1:]  # image in [-1, 1], mask logits

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        if batch.cond is None:  # the core's batches always carry it; inventing one would train on a lie
            raise ValueError("example_vae is conditional: train_step needs batch.cond [N, spec.cond_dim]")
        n, cond = len(batch), batch.cond
        with self.autocast():
            maps = cond[:, :, None, None].expand(-1, -1, *batch.image.shape[-2:])  # cond as constant maps
            mu, logvar = self.encoder(torch.cat([batch.image, batch.mask, maps], 1)).float().chunk(2, dim=1)
            z = mu + torch.exp(0.5 * logvar) * self.noise.randn(n, self.latent_dim)
            image, logits = self._decode(z, cond)
            recon = (image - batch.image).abs().mean()
            mask = F.binary_cross_entropy_with_logits(logits, batch.mask)
            kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1).mean() / batch.image[0].numel()
            loss = recon + mask + self.beta * kl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"image": recon.item(), "mask": mask.item(), "kl": kl.item()}

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None, masks: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> Batch:
        if cond is None:  # as the core's sampler does: conditions of real training slices (the contract);
            if self.train_cond is None:  # never zeros or other made-up values, which no real slice has
                raise RuntimeError("example_vae: sample() without cond needs setup(ctx) (training conditions)")
            cond = self.train_cond[torch.randint(len(self.train_cond), (n,), generator=generator)]
        cond = cond.cpu().float()
        z = torch.randn(n, self.latent_dim, generator=generator)
        image, logits = self._decode(z.to(self.device), cond.to(self.device))
        return Batch(image.cpu(), (logits > 0).float().cpu(), cond)
