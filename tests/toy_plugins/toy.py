"""Test-only plugins: the smallest real generator and evaluator that keep the contracts.

Loaded by the test suite with ``load_plugin_dir``; never shipped as built-ins.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from toolkit.plugin import EvalContext, Evaluator, Generator
from toolkit.registry import EVALUATORS, GENERATORS
from toolkit.types import Batch, DataSpec


@GENERATORS.register("toy")
class ToyGenerator(Generator):
    """A linear decoder from noise to (image, mask logits), trained by L2 to batch means."""

    tiny = {"latent_dim": 4}

    def __init__(self, spec: DataSpec, device="cpu", *, latent_dim: int = 8, lr: float = 1e-2) -> None:
        super().__init__(spec, device)
        self.latent_dim = latent_dim
        size = spec.image_size
        self.net = nn.Linear(latent_dim, 2 * size * size).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        s = self.spec.image_size
        return self.net(z).view(-1, 2, s, s)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        z = torch.randn(len(batch), self.latent_dim, device=self.device)
        with self.autocast():
            out = self._decode(z)
            loss = ((torch.tanh(out[:, :1]) - batch.image) ** 2).mean() + nn.functional.binary_cross_entropy_with_logits(
                out[:, 1:], batch.mask)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def sample(self, n, cond=None, masks=None, generator=None) -> Batch:
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        out = self._decode(z).float().cpu()
        return Batch(torch.tanh(out[:, :1]), (out[:, 1:] > 0).float(), cond)


@GENERATORS.register("toy_mask2image")
class ToyMaskToImage(Generator):
    """Paints the given masks: image = learned foreground/background levels plus noise."""

    needs_masks = True

    def __init__(self, spec: DataSpec, device="cpu", *, lr: float = 1e-1) -> None:
        super().__init__(spec, device)
        self.levels = nn.Linear(1, 1).to(self.device)
        self.opt = torch.optim.SGD(self.levels.parameters(), lr=lr)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        pred = torch.tanh(self.levels(batch.mask.reshape(-1, 1))).view_as(batch.image)
        loss = ((pred - batch.image) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def sample(self, n, cond=None, masks=None, generator=None) -> Batch:
        if masks is None:  # no masks given: draw from the source the core handed over in setup()
            masks, cond = self.mask_source.draw(n, generator)
        noise = 0.05 * torch.randn(masks.shape, generator=generator)
        image = torch.tanh(self.levels(masks.to(self.device).reshape(-1, 1))).view_as(masks).cpu() + noise
        return Batch(image.clamp(-1, 1), masks.float(), cond)


@EVALUATORS.register("toy_stats")
class ToyStats(Evaluator):
    """Absolute differences of mean intensity and gland share between synthetic and real-train."""

    metrics = ("mean_gap", "gland_share_gap")
    primary = "mean_gap"
    higher_is_better = False

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = scale

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        mean_gap = abs(float(ctx.synthetic.images.mean()) - float(ctx.train.images.mean()))
        share_gap = abs(float(ctx.synthetic.has_gland().mean()) - float(ctx.train.has_gland().mean()))
        return {"mean_gap": self.scale * mean_gap, "gland_share_gap": float(np.float64(share_gap))}
