"""Adaptive discriminator augmentation (Karras et al., NeurIPS 2020, "Training Generative Adversarial
Networks with Limited Data").

Every image D sees, real or fake, in the D and the G step, goes through a
pipeline of augmentations each applied with probability ``p``; ``p`` is steered
by the overfitting heuristic ``r_t = E[sign(D(real))]`` towards a target (0.6),
adjusted every few steps. Here the inputs are (image, mask) pairs stacked as
channels (``toolkit.nn.pairs.encode_pair``): the geometric transforms move
image and mask through one sampling grid, the colour ones touch the image only.
The call shape is that of ``toolkit.nn.diffaug.DiffAugment``: one tensor in,
one out.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from toolkit.nn.rng import RandomSource

ADA_OPS = ("xflip", "translate", "scale", "rotate", "brightness", "contrast")


class AdaptiveAugment:
    """ADA's geometric + colour pipeline with the probability ``p`` steered by r_t.

    Each transform is applied to each sample independently with probability
    ``p``. The geometric ones (x-flip, integer translation of up to
    ``translate`` of the side, isotropic scaling ``2^N(0, 0.2)``, rotation
    uniform in +-``rotate_deg``) are composed into one affine map and applied
    to image and mask channels with one sampling grid (reflection padding, as
    in ADA), so the pair stays aligned; brightness (+N(0, 0.2)) and contrast
    (x 2^N(0, 0.5), around the image mean) touch the image channels only.
    With only flips and integer shifts the grid hits pixel centres, so those
    are exact.

    ``r_t`` is the mean of sign(D(real)) over the last ``interval`` steps; after
    each interval ``p`` moves by ``sign(r_t - target) * images / speed_images``,
    clamped to [0, p_max] (ADA, section 3: p can go 0 -> 1 in ``speed_images``
    images). All of it is in ``state_dict``.

    Args:
        image_channels: leading channels that are image intensities.
        target: r_t target (0.6 in ADA).
        interval: steps between adjustments of p.
        speed_images: images over which p can change by 1.
        p_init: starting probability.
        p_max: upper bound of p (ADA's transforms start to leak into G at p ~ 0.8).
        translate: largest integer shift, as a fraction of the side.
        rotate_deg: largest rotation angle in degrees.
        ops: comma-separated subset of ``ADA_OPS`` to use.
        device: where the random parameters go.
    """

    def __init__(self, image_channels: int = 1, target: float = 0.6, interval: int = 4,
                 speed_images: float = 5000.0, p_init: float = 0.0, p_max: float = 0.8,
                 translate: float = 0.125, rotate_deg: float = 180.0, ops: str = ",".join(ADA_OPS),
                 device: torch.device | str = "cpu") -> None:
        names = tuple(o.strip() for o in ops.split(",") if o.strip())
        unknown = [o for o in names if o not in ADA_OPS]
        if unknown:
            raise ValueError(f"unknown ADA transform(s) {unknown}; use a subset of {', '.join(ADA_OPS)}")
        self.enabled = torch.tensor([[float(o in names)] for o in ADA_OPS])
        self.image_channels = image_channels
        self.target = target
        self.interval = max(1, int(interval))
        self.speed_images = float(speed_images)
        self.p_max = float(p_max)
        self.translate = translate
        self.rotate_deg = rotate_deg
        self.p = float(p_init)
        self.rt = 0.0  # r_t of the last finished interval
        self.sign_sum = 0.0  # accumulators of the current interval
        self.sign_count = 0.0
        self.rng = RandomSource(device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment ``[N, C, H, W]`` pairs (image channels first, mask channel(s) in [-1, 1] after)."""
        n, _, h, w = x.shape
        # Draw every parameter every call, so the random stream does not depend on p.
        u = self.rng.rand(6, n)
        apply = ((u < self.p).float() * self.enabled.to(u.device)).to(x.dtype)  # [6, n], in ADA_OPS order
        normal = self.rng.randn(4, n).to(x.dtype)
        shift = ((self.rng.rand(2, n) * 2 - 1) * self.translate * torch.tensor([[h], [w]], device=u.device))
        shift = shift.round().to(x.dtype)  # integer pixels (dy, dx)
        angle = (self.rng.rand(n) * 2 - 1).to(x.dtype) * math.radians(self.rotate_deg)
        if self.p <= 0:
            return x
        # Output -> input coordinate map (normalised coordinates, x right, y down), per sample.
        flip = 1 - 2 * apply[0]
        scale = torch.exp2(normal[0] * 0.2 * apply[2])
        angle = angle * apply[3]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        tx, ty = 2 * shift[1] / w * apply[1], 2 * shift[0] / h * apply[1]
        theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
        if bool((apply[:4] > 0).any()):
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        k = self.image_channels
        image = x[:, :k]
        brightness = (normal[1] * 0.2 * apply[4]).view(n, 1, 1, 1)
        contrast = torch.exp2(normal[2] * 0.5 * apply[5]).view(n, 1, 1, 1)
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        image = (image - mean) * contrast + mean + brightness
        return torch.cat([image, x[:, k:]], dim=1)

    def observe(self, real_logits: torch.Tensor) -> None:
        """Accumulate sign(D(real)) of one D step."""
        self.sign_sum += float(torch.sign(real_logits.detach()).sum())
        self.sign_count += float(real_logits.numel())

    def adjust(self, update_p: bool = True) -> None:
        """End of an interval: r_t from the accumulators (summed over ranks), then move p towards the target.

        ``update_p=False`` only measures r_t (augmentation other than ADA).
        """
        stats = torch.tensor([self.sign_sum, self.sign_count], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend_device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
            stats = stats.to(backend_device)
            torch.distributed.all_reduce(stats)
            stats = stats.cpu()
        total, count = float(stats[0]), float(stats[1])
        self.sign_sum, self.sign_count = 0.0, 0.0
        if count == 0:
            return
        self.rt = total / count
        if not update_p:
            return
        step = math.copysign(count / self.speed_images, self.rt - self.target) if self.rt != self.target else 0.0
        self.p = min(max(self.p + step, 0.0), self.p_max)

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p, "rt": self.rt, "sign_sum": self.sign_sum, "sign_count": self.sign_count,
                "rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p, self.rt = float(state["p"]), float(state["rt"])
        self.sign_sum, self.sign_count = float(state["sign_sum"]), float(state["sign_count"])
        self.rng.load_state_dict(state["rng"])
