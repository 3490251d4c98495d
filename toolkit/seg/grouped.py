"""K U-Nets as one network whose every convolution has ``groups=K``, trained by the shared loop.

The channels of model ``k`` are group ``k``, so model ``k`` only ever sees
its own input channel and its own weights; one forward over the validation
slices validates all K. This removes per-operator overhead (the win on a
GPU, where one small U-Net cannot fill the device), but on a CPU it measured
slower per model than one U-Net at a time (``toolkit.seg.batched`` says when
it is used).

Why the grouped network is the same training as ``train_unet``, job by job
(both run :func:`toolkit.seg.train.fit`; only the :class:`~toolkit.seg.train.Stack`
differs):

- Weights: each job's U-Net is built exactly as ``train_unet`` builds it
  (``torch.manual_seed(seed); build_unet(config)``) and copied into the
  grouped layout; a job's state is cut back out of it the same way.
- Batches: each job keeps its own ``torch.Generator`` seeded with its seed and
  calls ``draw_batch`` in the same order as ``train_unet`` (the same loop);
  its batch goes into its own input channel ``[B, K, H, W]``.
- Normalisation: batch norm over ``K * C`` channels is per-channel, hence
  per-model (its statistics are over the job's own batch); instance norm is
  per channel too, and group norm with ``K * G`` groups never mixes models
  because a model's channels are contiguous.
- Loss and gradients: the per-job Dice + BCE losses are summed; model ``k``'s
  parameters only reach loss ``k``, so their gradient is that job's own.
- Optimizer: Adam is elementwise and its bias correction depends only on the
  step count, which all jobs share, so one Adam over the grouped parameters
  is K Adams with the same learning rate.
- Model selection: one grouped forward over the validation slices predicts
  with all K models at once (eval mode: running statistics, per channel);
  each job keeps the state with its best mean 3D Dice, at ``val_every`` and
  the last step, ties keeping the earlier state.

What is not the same: floating-point summation order inside a grouped
convolution differs from a plain one, so a job's weights are not bit-equal to
``train_unet``'s after the first step; the trajectories drift apart like two
thread counts do, while the distribution (protocol, seeds' meaning) is the
same. For a fixed list of jobs and thread count the result is bit-for-bit
reproducible. ``tests/test_seg_batched.py`` checks both, with tolerances.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.data.slices import SliceSet
from toolkit.runtime import autocast, resolve_precision
from toolkit.seg.metrics import dice
from toolkit.seg.predict import stack_volumes
from toolkit.seg.train import Feed, TrainResult, build_unet, fit
from toolkit.settings import SegSettings


def _grouped_norm(kind: str, k: int, channels: int) -> nn.Module:
    """``toolkit.nn.unet._norm`` for K models side by side (channels per model: ``channels``)."""
    if kind == "batch":
        return nn.BatchNorm2d(k * channels)
    if kind == "instance":
        return nn.InstanceNorm2d(k * channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(k * min(8, channels), k * channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"U-Net norm must be batch, instance, group or none, got {kind!r}")


class _GroupedDoubleConv(nn.Sequential):
    def __init__(self, k: int, block: int, in_channels: int, out_channels: int, norm: str) -> None:
        bias = norm == "none"
        groups = k // block
        super().__init__(
            nn.Conv2d(k * in_channels, k * out_channels, 3, padding=1, bias=bias, groups=groups),
            _grouped_norm(norm, k, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(k * out_channels, k * out_channels, 3, padding=1, bias=bias, groups=groups),
            _grouped_norm(norm, k, out_channels),
            nn.ReLU(inplace=True),
        )


def _block_mask(weight: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """1 where a grouped weight [k * a, block * b, ...] connects a model to itself, 0 elsewhere."""
    a, b = weight.shape[0] // k, weight.shape[1] // block
    mask = torch.zeros(weight.shape[:2], dtype=weight.dtype)
    for i in range(k):
        mask[i * a:(i + 1) * a, (i % block) * b:(i % block + 1) * b] = 1
    return mask.reshape(*weight.shape[:2], *([1] * (weight.dim() - 2)))


class GroupedUNet(nn.Module):
    """K copies of :class:`toolkit.nn.unet.UNet` as one network; input and output ``[N, K * C, H, W]``.

    Args:
        k: number of models.
        block: models per convolution group (must divide ``k``). 1: ``groups=k``, every model its own group.
            More: ``k / block`` groups, each a dense convolution over ``block`` models whose weights between
            different models are zero and stay zero (their gradient is masked, and Adam keeps a zero
            parameter with zero gradient at exactly zero), so the models stay independent; it spends
            ``block`` times the multiply-adds on wider, better-vectorised convolutions.
        the rest: as :class:`toolkit.nn.unet.UNet`.

    Module names and state-dict keys are the UNet's, each tensor being the K models' tensors concatenated
    along dim 0 (see :func:`pack_states`).
    """

    def __init__(self, k: int, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16,
                 depth: int = 4, norm: str = "batch", block: int = 1) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"GroupedUNet needs at least one model, got k={k}")
        if block < 1 or k % block:
            raise ValueError(f"GroupedUNet block must divide k={k}, got {block}")
        self.k, self.block, self.depth = k, block, depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.down.append(_GroupedDoubleConv(k, block, channels, width, norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _GroupedDoubleConv(k, block, widths[-2], widths[-1], norm)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(k * widths[i], k * widths[i - 1], 2, stride=2, groups=k // block))
            self.up_conv.append(_GroupedDoubleConv(k, block, 2 * widths[i - 1], widths[i - 1], norm))
        self.head = nn.Conv2d(k * widths[0], k * out_channels, 1, groups=k // block)
        if block > 1:
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    mask = _block_mask(module.weight, k, block)
                    with torch.no_grad():
                        module.weight.mul_(mask)
                    module.weight.register_hook(lambda grad, m=mask: grad * m.to(grad.dtype))

    def _concat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per model ``cat([a_k, b_k])``: group k of the result is model k's skip concatenation."""
        n, c, h, w = a.shape
        if a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous(memory_format=torch.channels_last):
            # NHWC: channels are the fastest axis; interleave there and stay channels_last.
            a5 = a.permute(0, 2, 3, 1).reshape(n, h, w, self.k, c // self.k)
            b5 = b.permute(0, 2, 3, 1).reshape(n, h, w, self.k, b.shape[1] // self.k)
            return torch.cat([a5, b5], dim=4).reshape(n, h, w, -1).permute(0, 3, 1, 2)
        a5 = a.reshape(n, self.k, c // self.k, h, w)
        b5 = b.reshape(n, self.k, b.shape[1] // self.k, h, w)
        return torch.cat([a5, b5], dim=2).reshape(n, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.depth
        if x.dim() != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"U-Net of depth {self.depth} needs input [N, C, H, W] with H and W divisible by "
                             f"{factor}, got shape {tuple(x.shape)}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = conv(self._concat(up(x), skip))
        return self.head(x)


def pack_states(states: list[dict[str, torch.Tensor]], block: int = 1) -> dict[str, torch.Tensor]:
    """K UNet state dicts -> one GroupedUNet state dict (each tensor concatenated along dim 0).

    Convolution weights ([out, in, ...], transposed: [in, out, ...]) of model i go to rows i * a:(i + 1) * a
    and, with ``block`` > 1, columns (i % block) * b:(i % block + 1) * b of a zero weight [K * a, block * b, ...].
    """
    k = len(states)
    out = {}
    for key, first in states[0].items():
        if first.dim() == 0:  # BatchNorm's num_batches_tracked: one count, shared by all jobs
            out[key] = first.clone()
        elif first.dim() == 4 and block > 1:
            a, b = first.shape[:2]
            weight = first.new_zeros((k * a, block * b, *first.shape[2:]))
            for i, s in enumerate(states):
                weight[i * a:(i + 1) * a, (i % block) * b:(i % block + 1) * b] = s[key]
            out[key] = weight
        else:
            out[key] = torch.cat([s[key] for s in states], dim=0)
    return out


def unpack_state(state: dict[str, torch.Tensor], k: int, index: int, block: int = 1) -> dict[str, torch.Tensor]:
    """Job ``index``'s UNet state dict, cut (and copied) out of a GroupedUNet state dict of ``k`` models."""
    out = {}
    for key, value in state.items():
        value = value.detach()
        if value.dim() == 0:
            out[key] = value.clone()
            continue
        a = value.shape[0] // k
        part = value[index * a:(index + 1) * a]
        if value.dim() == 4 and block > 1:
            b = value.shape[1] // block
            j = index % block
            part = part[:, j * b:(j + 1) * b]
        out[key] = part.clone(memory_format=torch.contiguous_format)
    return out


def grouped_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-job :func:`toolkit.seg.train.dice_bce_loss` of ``[B, K, H, W]`` logits: a vector of K losses."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(0, 2, 3))
    prob = torch.sigmoid(logits)
    soft_dice = (2 * (prob * target).sum(dim=(0, 2, 3)) + 1) / (prob.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + 1)
    return bce + (1 - soft_dice)


# Validation of all K models at once ---------------------------------------------------------


@torch.no_grad()
def grouped_probs(net: GroupedUNet, images: np.ndarray, batch_size: int = 64, device: torch.device | str = "cpu",
                  amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> np.ndarray:
    """Gland probabilities of every model, float32 [K, N, H, W], for images float32 [N, H, W]."""
    device = torch.device(device)
    was_training = net.training
    net.eval()
    out = np.empty((net.k, *images.shape), dtype=np.float32)
    try:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))[:, None].float()
            x = x.to(device).expand(-1, net.k, -1, -1)
            x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            with autocast(device, amp_dtype):
                logits = net(x)
            out[:, start:start + len(x)] = torch.sigmoid(logits.float()).transpose(0, 1).cpu().numpy()
    finally:
        net.train(was_training)
    return out


def grouped_volume_dice(net: GroupedUNet, slices: SliceSet, device: torch.device | str = "cpu",
                        amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> list[float]:
    """Each model's mean 3D Dice over the patients of ``slices`` (``volume_dice`` for K models)."""
    probs = grouped_probs(net, slices.images, device=device, amp_dtype=amp_dtype, channels_last=channels_last)
    return [float(np.mean([dice(p > 0.5, t) for p, t in stack_volumes(slices, prob).values()])) for prob in probs]


# Training through the shared loop -----------------------------------------------------------


class _GroupedStack:
    """K U-Nets in one :class:`GroupedUNet` as a :class:`~toolkit.seg.train.Stack`: batch ``k`` in input
    channel ``k``, a vector of K losses, one grouped validation pass, states cut out per job."""

    def __init__(self, net: GroupedUNet, feeds: list[Feed], seeds: list[int], config: SegSettings,
                 device: torch.device) -> None:
        self.net, self.seeds, self.config, self.device = net, seeds, config, device
        self.extra_size = feeds[0].extra_size  # the same for every feed of a group (Feed.signature)
        self.extra_weights = torch.tensor([f.extra_weight for f in feeds], dtype=torch.float32, device=device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    def batch(self, batches, device):
        images, masks = zip(*batches)
        image = torch.cat(images, dim=1).to(device).contiguous(memory_format=self.memory_format)
        return image, torch.cat(masks, dim=1).to(device)

    def loss(self, logits, mask):
        # feed_loss per job: the main batch's loss plus extra_weight x the extra batch's.
        main = self.config.batch_size
        if self.extra_size:
            losses = grouped_loss(logits[:main], mask[:main]) + \
                self.extra_weights * grouped_loss(logits[main:], mask[main:])
        else:
            losses = grouped_loss(logits, mask)
        return losses.sum(), losses.detach().double().cpu()

    def validate(self, val, device, amp_dtype):
        return grouped_volume_dice(self.net, val, device=device, amp_dtype=amp_dtype,
                                   channels_last=self.config.channels_last)

    def states(self, indices):
        if not indices:
            return []
        state = self.net.state_dict()
        return [unpack_state(state, self.net.k, i, self.net.block) for i in indices]

    def models(self, states):
        models = []
        for state in states:
            model = build_unet(self.config)
            model.load_state_dict(state)
            model = model.to(self.device)
            if self.config.channels_last:
                model = model.to(memory_format=torch.channels_last)
            model.eval()
            models.append(model)
        return models

    def where(self, index):
        return f"seed {self.seeds[index]}, job {index}"


def train_grouped(feeds: list[Feed], seeds: list[int], val: SliceSet, config: SegSettings, device: torch.device,
                  log: object | None = None, block: int = 1) -> list[TrainResult]:
    """Train ``train_unet(feeds[i], val, config, seeds[i], device)`` for every ``i`` as one grouped network
    (the feeds must share one :meth:`~toolkit.seg.train.Feed.signature`); ``log``: callable(i, step, loss,
    val_dice); ``seconds`` is the joint wall time divided by the number of models."""
    amp_dtype = resolve_precision(config.precision, device)

    # Initial weights exactly as train_unet makes them, packed side by side.
    states = []
    for seed in seeds:
        torch.manual_seed(seed)
        states.append(build_unet(config).state_dict())
    net = GroupedUNet(len(feeds), 1, 1, config.base_channels, config.depth, config.norm, block=block)
    net.load_state_dict(pack_states(states, block))
    net = net.to(device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    stack = _GroupedStack(net, feeds, seeds, config, device)
    return fit(stack, feeds, seeds, val, config, device, amp_dtype, log)


__all__ = ["GroupedUNet", "grouped_loss", "grouped_probs", "grouped_volume_dice", "pack_states",
           "train_grouped", "unpack_state"]
