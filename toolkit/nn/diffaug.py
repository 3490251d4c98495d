"""Differentiable augmentation of (image, mask) pairs for GAN discriminators.

With a few hundred training slices a discriminator memorises the real set and
its gradients stop helping the generator. DiffAugment (Zhao et al., NeurIPS
2020, "Differentiable Augmentation for Data-Efficient GAN Training") applies
the same kind of random, differentiable transform to real and fake inputs of
D, in both the D and the G step, so D sees more varied data while G is still
trained towards the un-augmented distribution.

Here the inputs are (image, mask) pairs stacked as channels. Geometric
transforms (translation, cutout) move the image and mask channels together,
so the pair stays aligned; intensity transforms (brightness, contrast) touch
the image channels only, so a mask keeps meaning "gland here". Random
parameters come from a :class:`~toolkit.nn.rng.RandomSource` whose state is
part of the owner's ``state_dict``, so a resumed run augments exactly as the
uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from toolkit.nn.rng import RandomSource

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; "" or "none" -> ()."""
    parts = tuple(p.strip() for p in policy.split(",") if p.strip() and p.strip() != "none")
    unknown = [p for p in parts if p not in POLICIES]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment policy {', '.join(unknown)!s} in {policy!r}; "
            f"use a comma-separated subset of {', '.join(POLICIES)} (or 'none')"
        )
    return parts


class DiffAugment:
    """Random differentiable transforms shared by every tensor of one call.

    Args:
        policy: comma-separated subset of ``color``, ``translation``,
            ``cutout``; "none" or "" disables augmentation.
        image_channels: the leading channels that are image intensities in
            [-1, 1]; the remaining channels are masks.
        translation_ratio: largest shift, as a fraction of the image side.
        cutout_ratio: side of the cut-out square, as a fraction of the image side.
        seed: seed of the random parameters; None draws one from torch's global
            generator (so it follows the experiment seed).
        device: where the parameters are moved.
    """

    #: Value that translation pads with and cutout fills with: black for image
    #: channels (-1), background for mask channels (0 in {0, 1}, -1 in [-1, 1]).
    image_fill = -1.0

    def __init__(
        self,
        policy: str = "color,translation,cutout",
        image_channels: int = 1,
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.policy = parse_policy(policy)
        self.image_channels = image_channels
        self.translation_ratio = translation_ratio
        self.cutout_ratio = cutout_ratio
        self.rng = RandomSource(seed, device)

    def __call__(self, x: torch.Tensor, mask_fill: float = -1.0) -> torch.Tensor:
        """Augment one ``[N, C, H, W]`` tensor (channels ``[:image_channels]`` are image): D's input.

        The call shape of every augmentation of D's inputs (``toolkit.nn.ada.AdaptiveAugment`` too);
        the input itself when the policy is empty. ``mask_fill`` as in :meth:`same`.
        """
        return self.same(x, mask_fill=mask_fill)[0]

    def same(self, *xs: torch.Tensor, mask_fill: float = -1.0) -> tuple[torch.Tensor, ...]:
        """Augment each ``[N, C, H, W]`` tensor with the same random parameters.

        Passing a real batch and its reconstruction together gives both the
        same transform per sample, which feature matching between them needs.

        Args:
            xs: tensors of equal shape; channels ``[:image_channels]`` are image.
            mask_fill: background value of the mask channels as the caller
                encodes them (-1 for masks mapped to [-1, 1], 0 for {0, 1}).

        Returns:
            The augmented tensors, in order (the inputs themselves when the
            policy is empty).
        """
        if not self.policy:
            return xs
        shape = xs[0].shape
        if any(x.shape != shape for x in xs):
            raise ValueError(f"DiffAugment needs tensors of one shape, got {[tuple(x.shape) for x in xs]}")
        n, c, h, w = shape
        fill = torch.full((1, c, 1, 1), mask_fill)
        fill[:, : self.image_channels] = self.image_fill
        fill = fill.to(device=xs[0].device, dtype=xs[0].dtype)
        out = list(xs)
        for name in self.policy:
            # Draw once per call, apply to every tensor: identical transforms per sample.
            if name == "color":
                brightness = (self.rng.rand(n, 1, 1, 1) - 0.5) * 0.5  # +-0.25 on a range of 2
                contrast = self.rng.rand(n, 1, 1, 1) + 0.5  # x0.5 .. x1.5 around the mean
                out = [self._color(x, brightness, contrast) for x in out]
            elif name == "translation":
                shift = max(1, int(round(min(h, w) * self.translation_ratio)))
                dy = self.rng.randint(-shift, shift + 1, (n,))
                dx = self.rng.randint(-shift, shift + 1, (n,))
                out = [self._translate(x, dy, dx, shift, fill) for x in out]
            elif name == "cutout":
                size_h, size_w = int(h * self.cutout_ratio + 0.5), int(w * self.cutout_ratio + 0.5)
                cy = self.rng.randint(0, h + (1 - size_h % 2), (n,))
                cx = self.rng.randint(0, w + (1 - size_w % 2), (n,))
                keep = self._cutout_mask(n, h, w, cy, cx, size_h, size_w).to(xs[0].device)
                out = [x * keep + fill * (1 - keep) for x in out]
        return tuple(out)

    def _color(self, x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        k = self.image_channels
        image = x[:, :k]
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        image = (image + brightness.to(x.dtype) - mean) * contrast.to(x.dtype) + mean
        return torch.cat([image, x[:, k:]], dim=1)

    @staticmethod
    def _translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int,
                   fill: torch.Tensor) -> torch.Tensor:
        # Pad with each channel's background, then crop a shifted window per sample.
        h, w = x.shape[-2:]
        padded = F.pad(x - fill, (pad, pad, pad, pad)) + fill
        rows = [
            padded[i, :, pad + int(dy[i]) : pad + int(dy[i]) + h, pad + int(dx[i]) : pad + int(dx[i]) + w]
            for i in range(x.shape[0])
        ]
        return torch.stack(rows)

    @staticmethod
    def _cutout_mask(n: int, h: int, w: int, cy: torch.Tensor, cx: torch.Tensor,
                     size_h: int, size_w: int) -> torch.Tensor:
        y0 = (cy - size_h // 2).view(n, 1, 1)
        x0 = (cx - size_w // 2).view(n, 1, 1)
        ys = torch.arange(h).view(1, h, 1)
        xs = torch.arange(w).view(1, 1, w)
        inside_y = (ys >= y0) & (ys < y0 + size_h)
        inside_x = (xs >= x0) & (xs < x0 + size_w)
        return (~(inside_y & inside_x)).float().unsqueeze(1)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.load_state_dict(state["rng"])
