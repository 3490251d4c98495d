"""Drawing synthetic sets: what the core hands a generator besides a count."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from toolkit.data.masks import MaskSource, RealMasks
from toolkit.data.slices import SliceSet
from toolkit.plugin import Generator
from toolkit.types import Batch

Sampler = Callable[[int, torch.Generator], Batch]


def make_sampler(gen: Generator, train: SliceSet, mask_source: MaskSource | None = None) -> Sampler:
    """A function ``(n, torch.Generator) -> Batch`` that feeds the generator what it needs.

    Conditional generators get condition vectors drawn from the real training
    slices; mask-to-image generators get masks from ``mask_source`` (default:
    the one the generator received in ``setup``, else the real training
    masks) with those masks' own condition vectors, and must return them.
    """
    real = train.to_batch()
    if gen.needs_masks and mask_source is None:
        mask_source = gen.mask_source or RealMasks(train)

    def sample(n: int, generator: torch.Generator) -> Batch:
        # Rows are drawn for every generator, so a seed gives the same synthetic set as before mask sources existed.
        rows = torch.randint(len(real), (n,), generator=generator)
        masks, cond = None, real.cond[rows] if gen.conditional else None
        if gen.needs_masks:
            masks, cond = mask_source.draw(n, generator)
        was_training = {name: m.training for name, m in gen.modules().items()}
        gen.eval()
        try:
            with torch.no_grad():
                out = gen.sample(n, cond=cond, masks=masks, generator=generator)
        finally:
            for name, module in gen.modules().items():
                module.train(was_training[name])
        if masks is not None and not torch.equal(out.mask.cpu().float(), masks):
            raise RuntimeError(f"{type(gen).__name__}.sample was given masks but returned other masks; "
                               "a mask-to-image generator must return the masks it rendered")
        return Batch(out.image.cpu().float(), out.mask.cpu().float(), None if out.cond is None else out.cond.cpu())

    return sample


def sample_set(sampler: Sampler, n: int, seed: int, chunk: int = 256, spacing: np.ndarray | None = None) -> SliceSet:
    """``n`` synthetic pairs in chunks, deterministic given ``seed`` (``spacing`` [3] mm: the real slices')."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, n, chunk):
        parts.append(SliceSet.from_batch(sampler(min(chunk, n - start), generator), spacing=spacing))
    out = SliceSet.concat(parts)
    out.slice_index = np.arange(len(out), dtype=np.int64)
    return out
