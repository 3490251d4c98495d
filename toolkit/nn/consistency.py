"""Segmentation consistency: a segmenter must find each generated mask in its generated image.

A discriminator judges whether a pair looks real; a segmenter asks the narrower
question a downstream U-Net asks, whether the gland in the image is the one in
the mask. Its loss on (generated image, its mask) becomes a term of G's loss,
with the segmenter's weights fixed in that step and the mask as the (detached)
target, so the gradient redraws the image, not the mask.

Where the segmenter comes from is the generator's choice: ``pix2pix`` holds the
core's frozen real-data baseline (``TrainContext.segmenter``) in a
:class:`FrozenSegmenter`; ``vaegan`` trains its own alongside on the real pairs
only (and holds it fixed with ``toolkit.nn.optim.frozen`` during G's step),
because the baseline is the network ``dice_gain`` scores label fidelity with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from toolkit.nn import losses

#: ``(logits, target mask) -> loss``.
SegLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus the per-sample soft Dice loss of :func:`toolkit.nn.losses.mask_loss`."""
    bce, dice = losses.mask_loss(logits, target)
    return bce + dice


def consistency_loss(segmenter: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, mask: torch.Tensor,
                     autocast: Callable[[], contextlib.AbstractContextManager],
                     loss_fn: SegLoss = bce_dice_loss) -> torch.Tensor:
    """The segmenter's loss on generated images against their own masks (float32; the mask detached).

    The segmenter's parameters must not require grad here (a :class:`FrozenSegmenter`, or inside
    ``frozen(...)``), so the gradient reaches the image only.

    Args:
        autocast: a callable returning the generator's mixed-precision context.
    """
    with autocast():
        logits = segmenter(image)
    return loss_fn(logits.float(), mask.detach())


class FrozenSegmenter:
    """A frozen U-Net, held outside ``nn.Module`` attributes so it is never trained.

    ``Generator.modules()`` lists it as ``<attr>.module``, which the base class
    keeps in eval mode (BatchNorm statistics never move); its parameters never
    require grad, so gradients flow through it to the rendered image only.
    ``state_dict`` carries its weights, so a resumed run uses the same network.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval().requires_grad_(False)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.module(image)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
