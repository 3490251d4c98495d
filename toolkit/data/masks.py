"""Mask sources: where a mask-to-image generator's masks come from.

A mask-to-image generator (pix2pix, mask-conditioned diffusion) renders an
image for a given mask; what it renders depends on which masks it is handed.
The core builds one :class:`MaskSource` from the ``masks`` config section and
hands it to the generator (``Generator.setup``), so no plugin imports
another to get masks:

- ``deformed_real`` (default): real training masks under a random elastic +
  affine deformation, kept only when the result is still a plausible gland
  (one connected component, area inside the training range); the condition
  vector is recomputed for the deformed mask.
- ``real``: the real training masks as they are (the comparison arm).
- ``run:<dir>``: the masks of another finished run's synthetic set
  (``<dir>/synthetic/synthetic.npz``), e.g. a ``vae`` run, so a renderer
  paints masks that never existed.

Every draw is deterministic given the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from toolkit.data.errors import DataError
from toolkit.data.slices import SliceSet
from toolkit.settings import SOURCES, check_source  # noqa: F401  (SOURCES: re-exported)


def mask_condition(masks: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Condition vectors [N, 2] for masks [N, 1, H, W]: (slice position, gland area fraction).

    A deformation moves the mask within its slice, not the slice within the
    volume, so the position is kept and the area is measured on the new mask.
    """
    area = masks.float().mean(dim=(1, 2, 3))
    return torch.stack([position.float(), area], dim=1)


class MaskSource(abc.ABC):
    """Draws masks and their condition vectors for a mask-to-image generator."""

    name: str = ""

    @abc.abstractmethod
    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` masks float [n, 1, H, W] in {0, 1} and their conditions [n, cond_dim], on the CPU."""


class RealMasks(MaskSource):
    """The real training masks, unchanged, drawn with replacement."""

    name = "real"

    def __init__(self, train: SliceSet) -> None:
        if len(train) == 0:
            raise ValueError("mask source 'real' needs training slices")
        self.masks = torch.from_numpy(np.ascontiguousarray(train.masks))[:, None].float()
        self.cond = torch.from_numpy(np.ascontiguousarray(train.cond)).float()

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(self.masks), (n,), generator=generator)
        return self.masks[rows].clone(), self.cond[rows].clone()


def deform(masks: torch.Tensor, generator: torch.Generator, *, rotate_deg: float, scale: float,
           translate: float, elastic: float, elastic_grid: int = 4,
           images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masks [N, 1, H, W] (and their images) under one random flip + rotation + zoom + shift + elastic warp each.

    Bilinear resampling then a 0.5 threshold keeps the boundary smooth (a
    nearest-neighbour warp would make it jagged) and the values in {0, 1}.
    Images, when given, follow the same warp (bilinear, background -1 outside).
    """
    n, _, h, w = masks.shape
    u = torch.rand(n, 5, generator=generator)
    angle = (u[:, 0] * 2 - 1) * np.deg2rad(rotate_deg)
    zoom = 1 + (u[:, 1] * 2 - 1) * scale
    shift = (u[:, 2:4] * 2 - 1) * translate * 2  # normalised units: 2 is the image side
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if elastic > 0:
        coarse = torch.randn(n, 2, elastic_grid, elastic_grid, generator=generator) * elastic
        grid = grid + F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    warped = F.grid_sample(masks.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if images is not None:
        images = F.grid_sample(images.float() + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    return (warped > 0.5).float(), images


def is_plausible(mask: np.ndarray, area_range: tuple[float, float]) -> bool:
    """One 8-connected component whose area fraction lies in ``area_range``."""
    _, count = ndimage.label(mask, structure=np.ones((3, 3)))
    return count == 1 and area_range[0] <= float(mask.mean()) <= area_range[1]


class DeformedMasks(MaskSource):
    """Real training masks under random elastic + affine deformations that stay plausible.

    A deformed mask that splits, vanishes or leaves the training area range
    is redrawn (up to ``tries`` times); after that the undeformed mask is
    used, so every mask handed out is plausible. Empty masks (slices outside
    the gland) stay empty.

    Args:
        train: the real training slices.
        rotate_deg / scale / translate / elastic: deformation strengths (see :func:`deform`).
        tries: redraws before falling back to the original mask.
    """

    name = "deformed_real"

    def __init__(self, train: SliceSet, *, rotate_deg: float = 15.0, scale: float = 0.15,
                 translate: float = 0.08, elastic: float = 0.04, tries: int = 4) -> None:
        self.real = RealMasks(train)
        self.images = torch.from_numpy(np.ascontiguousarray(train.images))[:, None].float()
        self.settings = {"rotate_deg": rotate_deg, "scale": scale, "translate": translate, "elastic": elastic}
        self.tries = tries
        areas = self.real.masks.mean(dim=(1, 2, 3))
        areas = areas[areas > 0]
        self.area_range = (float(areas.min()), float(areas.max())) if len(areas) else (0.0, 1.0)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        masks, _, cond = self.draw_pairs(n, generator, with_images=False)
        return masks, cond

    def draw_pairs(self, n: int, generator: torch.Generator, with_images: bool = True):
        """(masks, images or None, cond): the real pairs warped together, the masks kept plausible."""
        rows = torch.randint(len(self.real.masks), (n,), generator=generator)
        original, cond = self.real.masks[rows], self.real.cond[rows]
        images = self.images[rows] if with_images else None
        out, out_images = original.clone(), None if images is None else images.clone()
        todo = original.flatten(1).any(1)  # empty masks stay empty (their images are warped all the same)
        for attempt in range(self.tries):
            if not todo.any() and (images is None or attempt > 0):
                break
            # Every try deforms the whole batch, so the draws do not depend on which masks were accepted.
            candidate, warped = deform(original, generator, images=images, **self.settings)
            if warped is not None and attempt == 0:
                out_images[~todo] = warped[~todo]
            for i in torch.nonzero(todo).flatten().tolist():
                if is_plausible(candidate[i, 0].numpy(), self.area_range):
                    out[i] = candidate[i]
                    if warped is not None:
                        out_images[i] = warped[i]
                    todo[i] = False
        return out, out_images, mask_condition(out, cond[:, 0])


class RunMasks(MaskSource):
    """The masks of another finished run's synthetic set, drawn with replacement."""

    def __init__(self, run_dir: str | Path, image_size: int) -> None:
        path = Path(run_dir).expanduser() / "synthetic" / "synthetic.npz"
        if not path.is_file():
            raise DataError(f"masks.source run:{run_dir}: {path} does not exist; name a finished run "
                            "directory (runs/<name>) whose synthetic set was written")
        synthetic = SliceSet.load(path)
        if synthetic.image_size != image_size:
            raise DataError(f"masks.source run:{run_dir}: its masks are {synthetic.image_size} px, this run's "
                            f"data.image_size is {image_size}; use a run made at the same size")
        self.name = f"run:{run_dir}"
        self.masks = torch.from_numpy(np.ascontiguousarray(synthetic.masks))[:, None].float()
        position = torch.from_numpy(np.ascontiguousarray(synthetic.cond[:, 0])).float()
        self.cond = mask_condition(self.masks, position)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(self.masks), (n,), generator=generator)
        return self.masks[rows].clone(), self.cond[rows].clone()


def build_mask_source(source: str, train: SliceSet, **deform_settings: float) -> MaskSource:
    """The mask source named by ``masks.source``, over the real training slices."""
    check_source(source)
    if source == "real":
        return RealMasks(train)
    if source == "deformed_real":
        return DeformedMasks(train, **deform_settings)
    return RunMasks(source[len("run:"):], train.image_size)
