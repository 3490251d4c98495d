"""Drawing synthetic sets: what the core hands a generator besides a count."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.data.slices import SliceSet
from toolkit.plugin import Generator
from toolkit.types import Batch

Sampler = Callable[[int, torch.Generator], Batch]


def deformed_masks(masks: torch.Tensor, generator: torch.Generator, max_shift: float = 0.08,
                   max_rotation_deg: float = 12.0, scale_range: tuple[float, float] = (0.85, 1.15)) -> torch.Tensor:
    """Real masks under a random flip, rotation, scaling and shift: the default mask source.

    Mask-to-image generators need masks; deforming real training masks gives
    new shapes without inventing anatomy. Nearest-neighbour resampling keeps
    them binary.
    """
    n = masks.shape[0]
    u = torch.rand(n, 5, generator=generator)
    angle = (u[:, 0] * 2 - 1) * np.deg2rad(max_rotation_deg)
    scale = scale_range[0] + u[:, 1] * (scale_range[1] - scale_range[0])
    shift = (u[:, 2:4] * 2 - 1) * max_shift * 2
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(masks.shape), align_corners=False)
    return F.grid_sample(masks.float(), grid, mode="nearest", align_corners=False)


def make_sampler(gen: Generator, train: SliceSet) -> Sampler:
    """A function ``(n, torch.Generator) -> Batch`` that feeds the generator what it needs.

    Conditional generators get condition vectors drawn from the real training
    slices; mask-to-image generators get deformed real training masks (and
    those masks' conditions).
    """
    real = train.to_batch()

    def sample(n: int, generator: torch.Generator) -> Batch:
        rows = torch.randint(len(real), (n,), generator=generator)
        cond = real.cond[rows] if gen.conditional or gen.needs_masks else None
        masks = deformed_masks(real.mask[rows], generator) if gen.needs_masks else None
        was_training = [m.training for m in gen.modules().values()]
        gen.eval()
        try:
            with torch.no_grad():
                out = gen.sample(n, cond=cond, masks=masks, generator=generator)
        finally:
            for module, mode in zip(gen.modules().values(), was_training):
                module.train(mode)
        return Batch(out.image.cpu().float(), out.mask.cpu().float(), None if out.cond is None else out.cond.cpu())

    return sample


def sample_set(sampler: Sampler, n: int, seed: int, chunk: int = 256) -> SliceSet:
    """``n`` synthetic pairs in chunks, deterministic given ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, n, chunk):
        parts.append(SliceSet.from_batch(sampler(min(chunk, n - start), generator)))
    out = SliceSet.concat(parts)
    out.slice_index = np.arange(len(out), dtype=np.int64)
    return out
