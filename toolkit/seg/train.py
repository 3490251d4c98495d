"""Training the downstream U-Net: Dice + BCE, Adam with a warm-up + cosine schedule, augmentation,
model selection (and optional early stopping) on real validation Dice.

Every arm of the Dice-gain protocol (baseline, usage modes, TSTR, controls)
goes through :func:`train_unet` with the same config and seed; only its
:class:`Feed` differs: which pools each step's batch is drawn from, whether a
second (synthetic) batch is added on top, whether the first steps pre-train
on synthetic pairs. The number of optimizer steps is fixed by the config;
``Feed.images_per_step`` says how many images a step forwards, so an arm's
compute is on record.

The per-step pieces (:func:`lr_at`, :func:`draw_batch`, :func:`feed_loss`,
:class:`Selection`) are shared with the grouped trainer in
``toolkit.seg.batched``, so both run the same protocol call for call.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.data.augment import augment_level
from toolkit.data.slices import SliceSet
from toolkit.nn.unet import UNet
from toolkit.runtime import autocast, resolve_precision
from toolkit.seg.predict import volume_dice
from toolkit.settings import SegSettings

#: Validation Dice may rise by at most this much over the last quarter of training for an arm to count
#: as converged (its best over the last quarter minus its best before it).
CONVERGED_RISE = 0.005


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


@dataclass(frozen=True)
class Feed:
    """What one U-Net's batches hold, step by step: how an arm uses its (synthetic) pairs.

    Attributes:
        pools: every step's main batch (``seg.batch_size`` items, drawn by the pools' shares).
        extra: ``add`` mode: a second batch of ``extra_size`` items each step from these pools, forwarded
            with the main one, its loss weighted by ``extra_weight`` (the main batch keeps weight 1).
        pretrain: ``pretrain`` mode: the main batch's pools for the first ``pretrain_steps`` steps
            (then ``pools``, i.e. fine-tuning on real pairs).
    """

    pools: tuple[Pool, ...]
    extra: tuple[Pool, ...] = ()
    extra_size: int = 0
    extra_weight: float = 1.0
    pretrain: tuple[Pool, ...] = ()
    pretrain_steps: int = 0

    def __post_init__(self) -> None:
        if not self.pools:
            raise ValueError("a feed needs at least one pool")
        if bool(self.extra) != (self.extra_size > 0):
            raise ValueError("a feed's extra pools and extra_size go together")
        if self.extra_weight < 0:
            raise ValueError(f"extra_weight must be >= 0, got {self.extra_weight}")
        if bool(self.pretrain) != (self.pretrain_steps > 0):
            raise ValueError("a feed's pretrain pools and pretrain_steps go together")

    @classmethod
    def of(cls, pools: Feed | list[Pool] | tuple[Pool, ...]) -> Feed:
        return pools if isinstance(pools, Feed) else cls(tuple(pools))

    def pools_at(self, step: int) -> tuple[Pool, ...]:
        return self.pretrain if step <= self.pretrain_steps else self.pools

    def images_per_step(self, batch_size: int) -> int:
        return batch_size + self.extra_size

    def signature(self) -> tuple[int, int]:
        """What must agree between feeds trained side by side as one grouped network."""
        return self.extra_size, self.pretrain_steps


@dataclass
class TrainResult:
    """A trained U-Net (the best validated state) and how it got there."""

    model: UNet
    best_step: int
    best_val_dice: float
    seconds: float
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, loss, val dice)
    steps_done: int = 0  # fewer than seg.steps where early stopping ended training
    images_seen: int = 0  # images forwarded in training (batch items, extra ones included)

    def convergence(self, steps: int) -> dict[str, float]:
        """Did training converge? ``late_rise``: best val Dice over the last quarter of the planned steps
        minus the best before it (> CONVERGED_RISE: still rising); early stopping counts as converged."""
        return convergence(self.history, steps, self.steps_done or steps, self.best_step)


def convergence(history: list[tuple[int, float, float]], steps: int, steps_done: int,
                best_step: int) -> dict[str, float]:
    """The convergence facts of one training history (see :meth:`TrainResult.convergence`)."""
    stopped = steps_done < steps
    cut = steps - steps // 4
    before = [d for s, _, d in history if s <= cut]
    after = [d for s, _, d in history if s > cut]
    rise = (max(after) - max(before)) if before and after else float("nan")
    converged = stopped or (np.isfinite(rise) and rise <= CONVERGED_RISE)
    return {"best_step": float(best_step), "steps_done": float(steps_done), "stopped_early": float(stopped),
            "late_rise": float(rise), "converged": float(converged)}


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice over the whole batch (batch Dice stays defined on empty slices)."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    soft_dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + (1 - soft_dice)


def _draw(pools: tuple[Pool, ...] | list[Pool], batch_size: int,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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


def draw_batch(feed: Feed, step: int, config: SegSettings,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s augmented batch: the main items first, then the feed's extra ones."""
    image, mask = _draw(feed.pools_at(step), config.batch_size, generator)
    if feed.extra_size:
        extra_image, extra_mask = _draw(feed.extra, feed.extra_size, generator)
        image, mask = torch.cat([image, extra_image]), torch.cat([mask, extra_mask])
    return augment_level(image, mask, generator, config.augment, elastic=config.elastic)


def feed_loss(logits: torch.Tensor, mask: torch.Tensor, feed: Feed, batch_size: int) -> torch.Tensor:
    """The main batch's Dice + BCE, plus ``extra_weight`` x the extra batch's (each over its own items)."""
    if not feed.extra_size:
        return dice_bce_loss(logits, mask)
    return dice_bce_loss(logits[:batch_size], mask[:batch_size]) + \
        feed.extra_weight * dice_bce_loss(logits[batch_size:], mask[batch_size:])


def lr_at(step: int, config: SegSettings) -> float:
    """The learning rate of optimizer step ``step`` (1-based): constant, or linear warm-up over
    ``seg.warmup`` of the steps then cosine decay to 0 at ``seg.steps``."""
    if config.schedule == "constant":
        return config.lr
    warm = max(1, round(config.warmup * config.steps)) if config.warmup > 0 else 0
    if step <= warm:
        return config.lr * step / warm
    progress = (step - warm) / max(1, config.steps - warm)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class Selection:
    """Model selection on validation Dice: the best step, and early stopping after ``seg.patience``
    validations without improvement (0: never). Ties keep the earlier state."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_step, self.best_dice, self.since = 0, -1.0, 0
        self.stopped = False

    def update(self, step: int, val_dice: float) -> bool:
        """Record one validation; True when it is the new best (the caller keeps that state)."""
        if self.stopped:
            return False
        if val_dice > self.best_dice:
            self.best_step, self.best_dice, self.since = step, val_dice, 0
            return True
        self.since += 1
        self.stopped = self.patience > 0 and self.since >= self.patience
        return False


def is_validation_step(step: int, config: SegSettings) -> bool:
    return step % config.val_every == 0 or step == config.steps


def build_unet(config: SegSettings, channels: int = 1) -> UNet:
    return UNet(channels, 1, config.base_channels, config.depth, config.norm)


def train_unet(
    pools: Feed | list[Pool],
    val: SliceSet,
    config: SegSettings,
    seed: int,
    device: torch.device | str = "cpu",
    log: object | None = None,
) -> TrainResult:
    """Train one U-Net from ``seed`` on batches of ``pools`` (a :class:`Feed`, or a list of pools: every
    step's batch drawn from them); keep the state with the best val Dice.

    Args:
        pools: where training slices come from, with their batch shares, or a whole feed.
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
    feed = Feed.of(pools)
    device = torch.device(device)
    amp_dtype = resolve_precision(config.precision, device)
    torch.manual_seed(seed)  # initial weights
    generator = torch.Generator().manual_seed(seed)  # batches and augmentation
    model = build_unet(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    start = time.perf_counter()
    selection = Selection(config.patience)
    best_state = None
    history: list[tuple[int, float, float]] = []
    running, step, images_seen = 0.0, 0, 0
    for step in range(1, config.steps + 1):
        # Draw a batch from the feed and augment it.
        image, mask = draw_batch(feed, step, config, generator)
        image, mask = image.to(device), mask.to(device)
        if config.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)

        # One optimizer step.
        model.train()
        set_lr(optimizer, lr_at(step, config))
        with autocast(device, amp_dtype):
            logits = model(image)
        loss = feed_loss(logits, mask, feed, config.batch_size)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"segmenter loss became {loss.item()} at step {step} (seed {seed})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item()
        images_seen += len(image)

        # Validate on real patients; keep the best state; stop when it no longer improves.
        if is_validation_step(step, config):
            val_dice = volume_dice(model, val, device=device, amp_dtype=amp_dtype,
                                   channels_last=config.channels_last)
            n_loss = step - (history[-1][0] if history else 0)
            history.append((step, running / n_loss, val_dice))
            running = 0.0
            if log is not None:
                log(step, history[-1][1], val_dice)
            if selection.update(step, val_dice):
                best_state = copy.deepcopy(model.state_dict())
            if selection.stopped:
                break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, selection.best_step, selection.best_dice, time.perf_counter() - start, history,
                       steps_done=step, images_seen=images_seen)
