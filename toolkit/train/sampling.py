"""Drawing synthetic sets: what the core hands a generator besides a count."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from toolkit.data.masks import MaskSource, RealMasks
from toolkit.data.slices import SliceSet
from toolkit.plugin import Generator, PluginCallError, plugin_name
from toolkit.types import Batch

Sampler = Callable[[int, torch.Generator], Batch]


class GeneratorContractError(ValueError):
    """A generator's ``sample()`` output breaks the contract; the message names the generator and what was wrong."""


def check_sample(name: str, out: object, n: int, data_shape: tuple[int, ...], cond_dim: int,
                 given_masks: torch.Tensor | None = None) -> None:
    """Raise GeneratorContractError unless ``out`` is what ``sample(n, ...)`` must return (toolkit.plugin).

    ``n`` pairs; images [n, C, H, W] of the data's channels and size, finite, in [-1, 1]; masks [n, 1, H, W]
    holding only 0 and 1 (exactly the given masks, for a mask-to-image generator); a condition of
    ``cond_dim`` finite values per pair, or None.
    """
    def breach(what: str) -> GeneratorContractError:
        return GeneratorContractError(f"generator '{name}': sample() {what}. Fix the generator's sample() "
                                      "(the contract is Generator.sample in toolkit/plugin.py); the checkpoint "
                                      "is kept, so `run --resume` samples again once it is fixed")

    channels, height, width = data_shape
    if not isinstance(out, Batch):
        raise breach(f"returned a {type(out).__name__}, not a toolkit.types.Batch")
    for part in ("image", "mask"):
        value = getattr(out, part)
        if not isinstance(value, torch.Tensor):
            raise breach(f"returned {part} as a {type(value).__name__}, not a torch.Tensor")
        if value.dim() != 4:
            raise breach(f"returned {part}s of shape {list(value.shape)}; expected [N, "
                         f"{channels if part == 'image' else 1}, H, W] = [{n}, "
                         f"{channels if part == 'image' else 1}, {height}, {width}]")
    image, mask = out.image, out.mask
    if len(image) != n or len(mask) != n:
        raise breach(f"returned {len(image)} images and {len(mask)} masks when asked for {n} pairs")
    if tuple(image.shape[-2:]) != (height, width):
        raise breach(f"returned images of {image.shape[-2]} x {image.shape[-1]} for data of {height} x {width}")
    if image.shape[1] != channels:
        raise breach(f"returned images with {image.shape[1]} channel(s); the data has {channels}")
    if tuple(mask.shape[-2:]) != (height, width):
        raise breach(f"returned masks of {mask.shape[-2]} x {mask.shape[-1]} for {height} x {width} images")
    if mask.shape[1] != 1:
        raise breach(f"returned masks with {mask.shape[1]} channels; a mask has 1")
    if not image.is_floating_point():
        raise breach(f"returned images of dtype {image.dtype}; expected floats in [-1, 1]")
    image, mask = image.detach().float().cpu(), mask.detach().float().cpu()
    broken = ~torch.isfinite(image)
    if broken.any():
        raise breach(f"returned images holding {int(broken.sum())} NaN or infinite value(s) (in "
                     f"{int(broken.reshape(n, -1).any(1).sum())} of {n} images)")
    low, high = float(image.min()), float(image.max())
    if low < -1 - 1e-6 or high > 1 + 1e-6:
        raise breach(f"returned images ranging over [{low:.4g}, {high:.4g}], outside [-1, 1] (a missing tanh or "
                     "clamp?)")
    odd = mask[(mask != 0) & (mask != 1)]
    if len(odd):
        raise breach(f"returned masks holding {len(odd)} value(s) other than 0 and 1 (e.g. {float(odd[0]):.4g}); "
                     "threshold them, e.g. (logits > 0).float()")
    if given_masks is not None and not torch.equal(mask, given_masks.float().cpu()):
        raise breach("was given masks but returned other masks; a mask-to-image generator must return the masks "
                     "it rendered")
    if out.cond is not None:
        cond = out.cond
        if not isinstance(cond, torch.Tensor) or tuple(cond.shape) != (n, cond_dim):
            shape = list(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise breach(f"returned a condition of shape {shape}; expected [{n}, {cond_dim}] (spec.cond_dim) or None")
        if not torch.isfinite(cond.float()).all():
            raise breach("returned a condition holding NaN or infinite values")


def make_sampler(gen: Generator, train: SliceSet, mask_source: MaskSource | None = None) -> Sampler:
    """A function ``(n, torch.Generator) -> Batch`` that feeds the generator what it needs.

    Conditional generators get condition vectors drawn from the real training
    slices; mask-to-image generators get masks from ``mask_source`` (default:
    the one the generator received in ``setup``, else the real training
    masks) with those masks' own condition vectors, and must return them.

    Every output is checked against the contract (:func:`check_sample`): a breach is a
    GeneratorContractError naming the generator and what was wrong.
    """
    real = train.to_batch()
    gen_name = plugin_name(gen)
    data_shape = tuple(real.image.shape[1:])  # (C, H, W) of the real slices
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
        except Exception as exc:  # a bug in the plugin: name it, keep its traceback (__cause__)
            raise PluginCallError(f"generator '{gen_name}': sample({n}) raised {type(exc).__name__} (a bug in the "
                                  "plugin). The last checkpoint is kept: fix it, then "
                                  "`run --resume` continues from it") from exc
        finally:
            for name, module in gen.modules().items():
                module.train(was_training[name])
        check_sample(gen_name, out, n, data_shape, gen.spec.cond_dim, masks)  # here, before any evaluator sees it
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
