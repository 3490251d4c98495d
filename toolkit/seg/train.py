"""Training the downstream U-Net: Dice + BCE, Adam with a warm-up + cosine schedule, augmentation,
model selection (and optional early stopping) on real validation Dice.

Every arm of the Dice-gain protocol (baseline, usage modes, TSTR, controls)
goes through :func:`train_unet` with the same config and seed; only its
:class:`Feed` differs: which pools each step's batch is drawn from, whether a
second (synthetic) batch is added on top, whether the first steps pre-train
on synthetic pairs. The number of optimizer steps is fixed by the config;
``Feed.images_per_step`` says how many images a step forwards, so an arm's
compute is on record.

There is one training loop, :func:`fit`: :func:`train_unet` runs it with one
plain U-Net, ``toolkit.seg.grouped`` with K U-Nets as one grouped network.
Only the :class:`Stack` differs (how the models are held, batched, scored and
handed back), so the two paths cannot drift apart in the steps themselves.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


class Stack(Protocol):
    """The K U-Nets :func:`fit` trains: how they are held, batched, scored and handed back; the rest of the
    loop is :func:`fit`'s, the same for one plain U-Net and for K in one grouped network."""

    net: nn.Module  # what the optimizer steps and the batch goes through

    def batch(self, batches: list[tuple[torch.Tensor, torch.Tensor]],
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Each model's (image, mask) batch -> the network's input and target."""

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to backpropagate, and each model's loss (float64 [K], on the CPU)."""

    def validate(self, val: SliceSet, device: torch.device, amp_dtype: torch.dtype | None) -> list[float]:
        """Each model's mean 3D Dice over the patients of ``val``."""

    def states(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """Copies of the current weights of models ``indices``, each as a plain UNet state dict."""

    def models(self, states: list[dict[str, torch.Tensor]]) -> list[UNet]:
        """One plain UNet per model holding ``states[i]``, in eval mode."""

    def where(self, index: int) -> str:
        """Model ``index`` in an error message."""


def fit(stack: Stack, feeds: list[Feed], seeds: list[int], val: SliceSet, config: SegSettings,
        device: torch.device, amp_dtype: torch.dtype | None, log: object | None = None) -> list[TrainResult]:
    """The U-Net training loop: ``len(feeds)`` models held by ``stack``, model ``i`` fed by ``feeds[i]`` with
    batches and augmentation drawn from its own generator seeded with ``seeds[i]`` (initial weights are the
    caller's: ``torch.manual_seed(seed); build_unet(config)``). ``log``: optional callable(i, step, loss,
    val_dice). Returns one TrainResult per model; ``seconds`` is its share of the loop's wall time."""
    k = len(feeds)
    optimizer = torch.optim.Adam(stack.net.parameters(), lr=config.lr)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    start = time.perf_counter()
    selections = [Selection(config.patience) for _ in range(k)]
    best_states: list[dict | None] = [None] * k
    histories: list[list[tuple[int, float, float]]] = [[] for _ in range(k)]
    steps_done = [0] * k
    running = torch.zeros(k, dtype=torch.float64)
    last_val = 0
    for step in range(1, config.steps + 1):
        # Each model draws and augments its own batch from its own generator.
        batches = [draw_batch(feed, step, config, generator) for feed, generator in zip(feeds, generators)]
        image, mask = stack.batch(batches, device)

        # One optimizer step (of all models at once: each parameter reaches only its own model's loss).
        stack.net.train()
        set_lr(optimizer, lr_at(step, config))
        with autocast(device, amp_dtype):
            logits = stack.net(image)
        loss, values = stack.loss(logits, mask)
        if not torch.isfinite(values).all():
            bad = int(torch.nonzero(~torch.isfinite(values))[0])
            raise FloatingPointError(f"segmenter loss became {values[bad].item()} at step {step} "
                                     f"({stack.where(bad)})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += values

        # Validate on real patients; each model keeps its best state and stops when it no longer improves
        # (a model that stopped keeps its state and history as of its stop; the others go on).
        if is_validation_step(step, config):
            val_dice = stack.validate(val, device, amp_dtype)
            n_loss, last_val = step - last_val, step
            improved = []
            for i in range(k):
                if selections[i].stopped:
                    continue
                steps_done[i] = step
                histories[i].append((step, float(running[i]) / n_loss, val_dice[i]))
                if log is not None:
                    log(i, step, histories[i][-1][1], val_dice[i])
                if selections[i].update(step, val_dice[i]):
                    improved.append(i)
            for i, state in zip(improved, stack.states(improved)):
                best_states[i] = state
            running.zero_()
            if all(s.stopped for s in selections):
                break
    seconds = time.perf_counter() - start

    models = stack.models(best_states)
    return [TrainResult(models[i], selections[i].best_step, selections[i].best_dice, seconds / k, histories[i],
                        steps_done=steps_done[i],
                        images_seen=steps_done[i] * feeds[i].images_per_step(config.batch_size))
            for i in range(k)]


class _Single:
    """One plain U-Net as a :class:`Stack` (the :func:`train_unet` path)."""

    def __init__(self, model: UNet, feed: Feed, seed: int, config: SegSettings) -> None:
        self.net, self.feed, self.seed, self.config = model, feed, seed, config

    def batch(self, batches, device):
        ((image, mask),) = batches
        image, mask = image.to(device), mask.to(device)
        if self.config.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, mask

    def loss(self, logits, mask):
        loss = feed_loss(logits, mask, self.feed, self.config.batch_size)
        return loss, loss.detach().double().cpu().reshape(1)

    def validate(self, val, device, amp_dtype):
        return [volume_dice(self.net, val, device=device, amp_dtype=amp_dtype, channels_last=self.config.channels_last)]

    def states(self, indices):
        return [copy.deepcopy(self.net.state_dict()) for _ in indices]

    def models(self, states):
        self.net.load_state_dict(states[0])
        self.net.eval()
        return [self.net]

    def where(self, index):
        return f"seed {self.seed}"


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
    torch.manual_seed(seed)  # initial weights (batches and augmentation: fit's generator, seeded the same)
    model = build_unet(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model_log = None if log is None else (lambda i, *args: log(*args))
    return fit(_Single(model, feed, seed, config), [feed], [seed], val, config, device, amp_dtype, model_log)[0]
