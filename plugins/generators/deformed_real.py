"""``deformed_real``: a control, not a model: the real training pairs, warped.

Every synthetic pair is a real training (image, mask) pair under one random
flip, rotation, zoom, shift and smooth elastic warp, applied to image and
mask alike (``toolkit.data.masks.DeformedMasks.draw_pairs``, the deformations
of the ``deformed_real`` mask source; a warp that would split the gland or
push its area out of the training range is redrawn). It learns nothing:
``train_step`` does no work.

Why it exists: cheap augmentation is what a generator must beat to be worth
its cost. Ranked by the same protocol, at the same ratio as a synthetic set,
it is the leaderboard's bar: a generator whose gain does not exceed
``deformed_real``'s adds nothing that a few lines of warping would not.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from toolkit.data.masks import DeformedMasks
from toolkit.plugin import Generator, TrainContext
from toolkit.registry import GENERATORS
from toolkit.schema import NonNegativeFloat
from toolkit.types import Batch, DataSpec


@GENERATORS.register("deformed_real")
class DeformedReal(Generator):
    """Control: real training pairs under elastic + affine warps (what a generator must beat)."""

    tiny: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        spec: DataSpec,
        device: torch.device | str = "cpu",
        *,
        rotate_deg: NonNegativeFloat = 15.0,  # rotation drawn in +-rotate_deg degrees (as masks.rotate_deg)
        scale: NonNegativeFloat = 0.15,  # zoom drawn in [1 - scale, 1 + scale]
        translate: NonNegativeFloat = 0.08,  # shift drawn in +-translate of the image side
        elastic: NonNegativeFloat = 0.04,  # elastic displacement std (normalised units, 2 = image side)
    ) -> None:
        super().__init__(spec, device)
        self.settings = {"rotate_deg": rotate_deg, "scale": scale, "translate": translate, "elastic": elastic}
        self.pairs: DeformedMasks | None = None

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.pairs = DeformedMasks(ctx.train, **self.settings)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """Nothing to learn; the loop's bookkeeping (logs, checkpoints) still runs."""
        return {"loss": 0.0}

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None, masks: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> Batch:
        if self.pairs is None:
            raise RuntimeError("deformed_real samples the training pairs it gets in setup(); call setup first")
        masks, images, cond = self.pairs.draw_pairs(n, generator if generator is not None else torch.Generator())
        return Batch(images.clamp(-1, 1), masks, cond)
