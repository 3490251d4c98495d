"""Training the downstream U-Net: Dice + BCE, Adam, augmentation, model selection on real validation Dice.

Every arm of the Dice-gain protocol (baseline, augmented, TSTR, controls)
goes through :func:`train_unet` with the same config and seed; only the pools
it draws training slices from differ. The number of optimizer steps is fixed
by the config, so adding synthetic data never adds compute.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.data.augment import augment_batch
from toolkit.data.slices import SliceSet
from toolkit.nn.unet import UNet
from toolkit.runtime import autocast, resolve_precision
from toolkit.seg.predict import volume_dice
from toolkit.settings import SegSettings


@dataclass
class Pool:
    """Training slices one arm draws from, and its share of each batch.

    Attributes:
        images / masks: float32 [N, H, W] / uint8 [N, H, W].
        share: relative probability that a batch item comes from this pool.
        weights: per-slice sampling weights (None: uniform), e.g. to change
            the pool's share of slices with gland.
        transform: an optional function applied to each drawn image batch
            [B, 1, H, W] before augmentation (the blurred_real control).
    """

    images: np.ndarray
    masks: np.ndarray
    share: float = 1.0
    weights: np.ndarray | None = None
    transform: object | None = None
    name: str = "real"

    @classmethod
    def of(cls, slices: SliceSet, **kwargs) -> Pool:
        return cls(slices.images, slices.masks, **kwargs)

    def __post_init__(self) -> None:
        if len(self.images) == 0:
            raise ValueError(f"training pool '{self.name}' has no slices")
        if self.share <= 0:
            raise ValueError(f"training pool '{self.name}' needs a positive share, got {self.share}")


@dataclass
class TrainResult:
    """A trained U-Net (the best validated state) and how it got there."""

    model: UNet
    best_step: int
    best_val_dice: float
    seconds: float
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, loss, val dice)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice over the whole batch (batch Dice stays defined on empty slices)."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    soft_dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + (1 - soft_dice)


def _draw(pools: list[Pool], batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    shares = torch.tensor([p.share for p in pools], dtype=torch.float64)
    which = torch.multinomial(shares, batch_size, replacement=True, generator=generator)
    images, masks = [], []
    for i, pool in enumerate(pools):
        # Every pool draws a full batch of rows and keeps what it needs, so the rows of
        # one pool never depend on how many items the others got.
        if pool.weights is None:
            rows = torch.randint(len(pool.images), (batch_size,), generator=generator)
        else:
            rows = torch.multinomial(torch.as_tensor(pool.weights, dtype=torch.float64), batch_size,
                                     replacement=True, generator=generator)
        k = int((which == i).sum())
        if k == 0:
            continue
        rows = rows[:k].numpy()
        image = torch.from_numpy(pool.images[rows])[:, None].float()
        if pool.transform is not None:
            image = pool.transform(image)
        images.append(image)
        masks.append(torch.from_numpy(pool.masks[rows])[:, None].float())
    return torch.cat(images), torch.cat(masks)


def build_unet(config: SegSettings, channels: int = 1) -> UNet:
    return UNet(channels, 1, config.base_channels, config.depth, config.norm)


def train_unet(
    pools: list[Pool],
    val: SliceSet,
    config: SegSettings,
    seed: int,
    device: torch.device | str = "cpu",
    log: object | None = None,
) -> TrainResult:
    """Train one U-Net from ``seed`` on batches drawn from ``pools``; keep the state with the best val Dice.

    Args:
        pools: where training slices come from, with their batch shares.
        val: real validation slices; model selection uses the mean 3D Dice per patient.
        config: the segmenter settings.
        seed: initial weights, batch draws and augmentation all follow it.
        device: where to train.
        log: optional callable(step, loss, val_dice) for progress.

    Returns:
        The U-Net in eval mode holding the best validated weights.
    """
    if len(val) == 0:
        raise ValueError("the segmenter needs real validation slices for model selection; val is empty")
    device = torch.device(device)
    amp_dtype = resolve_precision(config.precision, device)
    torch.manual_seed(seed)  # initial weights
    generator = torch.Generator().manual_seed(seed)  # batches and augmentation
    model = build_unet(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    start = time.perf_counter()
    best_state, best_step, best_dice = None, 0, -1.0
    history: list[tuple[int, float, float]] = []
    running = 0.0
    for step in range(1, config.steps + 1):
        # Draw a batch from the pools and augment it.
        image, mask = _draw(pools, config.batch_size, generator)
        if config.augment:
            image, mask = augment_batch(image, mask, generator, elastic=config.elastic)
        image, mask = image.to(device), mask.to(device)
        if config.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)

        # One optimizer step.
        model.train()
        with autocast(device, amp_dtype):
            logits = model(image)
        loss = dice_bce_loss(logits, mask)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"segmenter loss became {loss.item()} at step {step} (seed {seed})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item()

        # Validate on real patients; keep the best state.
        if step % config.val_every == 0 or step == config.steps:
            val_dice = volume_dice(model, val, device=device, amp_dtype=amp_dtype,
                                   channels_last=config.channels_last)
            n_loss = step - (history[-1][0] if history else 0)
            history.append((step, running / n_loss, val_dice))
            running = 0.0
            if log is not None:
                log(step, history[-1][1], val_dice)
            if val_dice > best_dice:
                best_state = copy.deepcopy(model.state_dict())
                best_step, best_dice = step, val_dice
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_step, best_dice, time.perf_counter() - start, history)
