"""Training the K U-Nets of one evaluation together: spread over processes, or as one grouped network.

The Dice-gain protocol trains arms x seeds small U-Nets (the quick profile:
3 x 3 of 0.5M parameters at batch 16). A second intra-op thread buys nothing
at that size, so :func:`train_unets` has two ways to use a machine better:

- ``processes=N`` (CPU): the jobs are cut into N contiguous chunks, each
  trained in its own spawned process with one thread (on a 2-core CPU: both
  cores busy on different U-Nets). Within a process the jobs run one after
  another with :func:`toolkit.seg.train.train_unet` (``grouped=False``, the
  CPU default), so each result is bit-for-bit ``train_unet``'s at one thread.
- ``grouped=True``: the chunk is one network whose every convolution has
  ``groups=K``: the channels of model ``k`` are group ``k``, so model ``k``
  only ever sees its own input channel and its own weights; one forward
  over the validation slices validates all K. This removes per-operator
  overhead (the win on a GPU, where one small U-Net cannot fill the device;
  not measured here, no GPU was available), but on a CPU it measured slower
  per model than one U-Net at a time (its convolution backward is the
  cost; likely cache footprint, K times one U-Net's; benchmarks/results/seg_speed.md).
  Hence the default ``grouped=None``: grouped on CUDA, one by one on a CPU.

Why the grouped network is the same training as ``train_unet``, job by job:

- Weights: each job's U-Net is built exactly as ``train_unet`` builds it
  (``torch.manual_seed(seed); build_unet(config)``) and copied into the
  grouped layout; a job's state is cut back out of it the same way.
- Batches: each job keeps its own ``torch.Generator`` seeded with its seed and
  calls ``_draw`` and ``augment_batch`` in the same order as ``train_unet``;
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

import io
import os
import pickle
import signal
import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.data.slices import SliceSet
from toolkit.nn.unet import UNet
from toolkit.runtime import autocast, resolve_precision
from toolkit.seg.metrics import dice
from toolkit.seg.predict import stack_volumes
from toolkit.seg.train import (
    Feed,
    Pool,
    Selection,
    TrainResult,
    build_unet,
    draw_batch,
    is_validation_step,
    lr_at,
    set_lr,
    train_unet,
)
from toolkit.settings import SegSettings


@dataclass(frozen=True)
class Job:
    """One U-Net to train: its feed (or the pools its batches come from) and its seed
    (as ``train_unet(pools, ..., seed)``)."""

    pools: Feed | list[Pool]
    seed: int

    @property
    def feed(self) -> Feed:
        return Feed.of(self.pools)


# The grouped network ------------------------------------------------------------------------


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


# Training ----------------------------------------------------------------------------------


def _chunks(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into ``parts`` contiguous pieces of near-equal size (the first ones one longer)."""
    size, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        out.append(range(start, stop))
        start = stop
    return [r for r in out if len(r)]


def _train_here(jobs: list[Job], val: SliceSet, config: SegSettings, device: torch.device, log: object | None,
                grouped: bool, block: int) -> list[TrainResult]:
    """The jobs in this process: as one grouped network, or one after another with ``train_unet``."""
    if grouped:  # one grouped network per feed shape (every model of a group forwards the same batch size)
        results: list[TrainResult | None] = [None] * len(jobs)
        shapes: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            shapes.setdefault(job.feed.signature(), []).append(i)
        for members in shapes.values():
            group_log = None if log is None else (lambda i, *a, m=members: log(m[i], *a))
            size = block if len(members) % block == 0 else 1
            for i, result in zip(members, _train_grouped([jobs[i] for i in members], val, config, device,
                                                         group_log, size)):
                results[i] = result
        return results
    results = []
    for i, job in enumerate(jobs):
        job_log = None if log is None else (lambda step, loss, dice, i=i: log(i, step, loss, dice))
        results.append(train_unet(job.pools, val, config, job.seed, device, log=job_log))
    return results


@dataclass(frozen=True)
class Plan:
    """How this machine trains one evaluation's U-Nets: how many at once, and threads per U-Net.

    ``threads`` is also the count for inference in the calling process, and the one a baseline's
    cache key records (None: the current count).
    """

    processes: int
    threads: int | None


def unet_threads(config: SegSettings, device: torch.device | str = "cpu") -> int | None:
    """Threads per U-Net under ``seg.threads`` and ``seg.processes`` (see :func:`plan`); None: the current count."""
    if torch.device(device).type != "cpu":
        return config.threads
    if config.processes == "auto":
        return 1 if config.threads is None else config.threads
    if config.processes == 1:
        return config.threads
    return config.threads or 1


def plan(config: SegSettings, device: torch.device | str = "cpu") -> Plan:
    """Resolve ``seg.processes`` and ``seg.threads`` for ``device``.

    ==========  =========  ==================================================================
    processes   threads    trains
    ==========  =========  ==================================================================
    auto        null       in as many processes as cores are idle now, 1 thread each
    auto or 1   T          in this process at T threads
    1           null       in this process at the current thread count (the one-by-one path)
    N > 1       null or T  in N processes of 1 (or T) threads each
    ==========  =========  ==================================================================

    With one thread per U-Net the results are ``train_unet``'s at one thread whatever the number of
    processes (1 included), so ``auto`` gives the same numbers on a busy and on an idle machine.
    Off the CPU there is one process, at ``threads``.
    """
    from toolkit.runtime import default_threads

    threads = unet_threads(config, device)
    if torch.device(device).type != "cpu":
        return Plan(1, threads)
    if config.processes == "auto":
        return Plan(default_threads() if config.threads is None else 1, threads)
    return Plan(int(config.processes), threads)


def _worker(jobs: list[Job], val: SliceSet, config: SegSettings, threads: int, deterministic: bool,
            grouped: bool, block: int) -> list[tuple]:
    """One process's share of :func:`train_unets` (plain data back: state dicts, not modules)."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    return [(r.model.state_dict(), r.best_step, r.best_val_dice, r.seconds, r.history, r.steps_done, r.images_seen)
            for r in _train_here(jobs, val, config, torch.device("cpu"), None, grouped, block)]


def _die_with_parent(parent: int) -> None:
    """Linux: ask for SIGTERM when the parent dies (even by SIGKILL), so no worker is left orphaned."""
    if os.getppid() != parent:  # the parent is already gone
        os._exit(1)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _process_main(conn, parent: int, *args) -> None:
    """Entry point of a spawned worker: train its chunk, send ("ok", bytes) or ("error", (exc, traceback))."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends the workers
    _die_with_parent(parent)
    try:
        buffer = io.BytesIO()
        torch.save(_worker(*args), buffer)  # exact tensors, no shared-memory handles to outlive this process
        message = ("ok", buffer.getvalue())
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        text = traceback.format_exc()
        try:
            pickle.dumps(exc)
        except Exception:  # noqa: BLE001
            exc = None
        message = ("error", (exc, text))
    conn.send(message)
    conn.close()


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a segmenter worker process (the cause of the re-raise)."""


def _run_in_processes(chunks: list[list[Job]], args: tuple) -> list[list[tuple]]:
    """Each chunk in its own spawned process; the outputs in chunk order.

    A worker's exception is raised here (with its remote traceback as the cause and a note naming the
    worker and its seeds); a worker that dies without an answer (killed, out of memory) is a
    RuntimeError; on any of these, and on KeyboardInterrupt, every worker is terminated and joined.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    context = mp.get_context("spawn")
    processes, connections = [], []
    outputs: list[list[tuple] | None] = [None] * len(chunks)
    try:
        for i, chunk in enumerate(chunks):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_process_main, args=(send, os.getpid(), chunk, *args),
                                      name=f"ganseg-unets-{i}", daemon=True)
            process.start()
            send.close()  # only the worker holds the sending end: its death reads as EOF here
            processes.append(process)
            connections.append(receive)
        pending = dict(enumerate(connections))
        while pending:
            for connection in wait(list(pending.values())):
                i = next(k for k, c in pending.items() if c is connection)
                del pending[i]
                where = (f"segmenter worker {i + 1} of {len(chunks)} (U-Net seeds "
                         f"{[job.seed for job in chunks[i]]})")
                try:
                    kind, payload = connection.recv()
                except EOFError:
                    processes[i].join(timeout=5)
                    raise RuntimeError(f"{where} exited with code {processes[i].exitcode} without a result "
                                       "(killed? out of memory?)") from None
                if kind == "error":
                    exc, text = payload
                    if exc is None:
                        raise RuntimeError(f"{where} failed:\n{text}")
                    exc.add_note(f"raised in {where}")
                    raise exc from WorkerTraceback(f"\n\n{text}")
                outputs[i] = torch.load(io.BytesIO(payload), weights_only=True)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()
        for connection in connections:
            connection.close()
    return outputs


def train_unets(
    jobs: list[Job],
    val: SliceSet,
    config: SegSettings,
    device: torch.device | str = "cpu",
    log: object | None = None,
    processes: int = 1,
    grouped: bool | None = None,
    block: int = 1,
    threads: int | None = None,
) -> list[TrainResult]:
    """Train one U-Net per job together; job ``i``'s result is what ``train_unet(jobs[i].pools, val, config,
    jobs[i].seed, device)`` returns, up to floating-point summation order.

    Args:
        jobs: the U-Nets to train (pools and seed each); any number, seeds may repeat.
        val: real validation slices; model selection uses each model's mean 3D Dice per patient.
        config: the segmenter settings (the same for every job).
        device: where to train.
        log: optional callable(job_index, step, loss, val_dice) for progress (with ``processes > 1``: called
            for every validation once all processes are done).
        processes: CPU only: split the jobs into this many contiguous chunks (at most one per job), each
            trained in its own spawned process with ``threads`` threads. With ``grouped=False`` (the CPU
            default) each result is then bit-for-bit ``train_unet``'s at that thread count, whatever the
            number of processes; a grouped chunk's result depends on the chunk. Jobs must pickle (a pool
            ``transform`` must be a module-level function or ``functools.partial``, not a lambda).
            Ctrl-C or a failing worker ends every worker; a worker's exception is re-raised here.
        grouped: train each process's jobs as one grouped-convolution network (True) or one after another
            with ``train_unet`` (False: then each job's result is bit-for-bit ``train_unet``'s at the
            process's thread count). None: grouped on CUDA, one after another on a CPU, where the grouped
            network measured slower per model (benchmarks/results/seg_speed.md).
        block: grouped only: models per dense convolution group (see :class:`GroupedUNet`); must divide
            each process's number of jobs.
        threads: threads per worker process; None: ``torch.get_num_threads() // processes`` (at least 1).
            Ignored when everything runs in this process (its current count applies).

    Returns:
        One TrainResult per job, in job order: a plain :class:`UNet` in eval mode with that job's best
        validated weights, its best step and val Dice, its history, and ``seconds`` = its training's wall
        time (grouped: the joint training's wall time divided by the number of jobs, its share).
    """
    if not jobs:
        return []
    if len(val) == 0:
        raise ValueError("the segmenter needs real validation slices for model selection; val is empty")
    device = torch.device(device)
    if int(processes) < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    processes = min(int(processes), len(jobs))
    if grouped is None:
        grouped = device.type == "cuda"
    if processes == 1 or device.type != "cpu":
        return _train_here(jobs, val, config, device, log, grouped, block)
    import multiprocessing as mp

    if mp.current_process().daemon:  # may not start workers: one by one here (grouped=False: the same results)
        from toolkit.runtime import reproducible

        with reproducible(threads):
            return _train_here(jobs, val, config, device, log, grouped, block)

    try:
        pickle.dumps(jobs)
    except Exception as exc:  # noqa: BLE001 - say what must change, before any process starts
        raise TypeError(f"train_unets(processes={processes}): the jobs must pickle to reach the worker "
                        "processes (a pool transform must be a module-level function or a functools.partial, "
                        f"not a lambda or a local function): {exc}") from exc
    threads = max(1, torch.get_num_threads() // processes) if threads is None else int(threads)
    chunks = [[jobs[i] for i in chunk] for chunk in _chunks(len(jobs), processes)]
    outputs = _run_in_processes(chunks, (val, config, threads, torch.are_deterministic_algorithms_enabled(),
                                         grouped, block))
    results = []
    for output in outputs:
        for state, best_step, best_dice, seconds, history, steps_done, images_seen in output:
            model = build_unet(config)
            model.load_state_dict(state)
            if config.channels_last:
                model = model.to(memory_format=torch.channels_last)
            model.eval()
            results.append(TrainResult(model, best_step, best_dice, seconds, [tuple(h) for h in history],
                                       steps_done=steps_done, images_seen=images_seen))
    if log is not None:
        for i, result in enumerate(results):
            for step, loss, val_dice in result.history:
                log(i, step, loss, val_dice)
    return results


def _train_grouped(jobs: list[Job], val: SliceSet, config: SegSettings, device: torch.device,
                   log: object | None, block: int = 1) -> list[TrainResult]:
    """All ``jobs`` as one grouped network in this process (the body of :func:`train_unets`)."""
    amp_dtype = resolve_precision(config.precision, device)
    k = len(jobs)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    # Initial weights exactly as train_unet makes them, packed side by side.
    states = []
    for job in jobs:
        torch.manual_seed(job.seed)
        states.append(build_unet(config).state_dict())
    net = GroupedUNet(k, 1, 1, config.base_channels, config.depth, config.norm, block=block)
    net.load_state_dict(pack_states(states, block))
    net = net.to(device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    generators = [torch.Generator().manual_seed(job.seed) for job in jobs]
    feeds = [job.feed for job in jobs]
    main = config.batch_size
    extra_weights = torch.tensor([f.extra_weight for f in feeds], dtype=torch.float32, device=device)

    start = time.perf_counter()
    best_states: list[dict | None] = [None] * k
    selections = [Selection(config.patience) for _ in jobs]
    steps_done = [0] * k
    histories: list[list[tuple[int, float, float]]] = [[] for _ in jobs]
    running = torch.zeros(k, dtype=torch.float64)
    last_val = 0
    for step in range(1, config.steps + 1):
        # Each job draws and augments its own batch from its own generator, as train_unet does.
        images, masks = [], []
        for feed, generator in zip(feeds, generators):
            image, mask = draw_batch(feed, step, config, generator)
            images.append(image)
            masks.append(mask)
        image = torch.cat(images, dim=1).to(device).contiguous(memory_format=memory_format)
        mask = torch.cat(masks, dim=1).to(device)

        # One optimizer step of all K models: the sum of the per-job losses (feed_loss, per job).
        net.train()
        set_lr(optimizer, lr_at(step, config))
        with autocast(device, amp_dtype):
            logits = net(image)
        if feeds[0].extra_size:
            losses = grouped_loss(logits[:main], mask[:main]) + \
                extra_weights * grouped_loss(logits[main:], mask[main:])
        else:
            losses = grouped_loss(logits, mask)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        values = losses.detach().double().cpu()
        if not torch.isfinite(values).all():
            bad = int(torch.nonzero(~torch.isfinite(values))[0])
            raise FloatingPointError(f"segmenter loss became {values[bad].item()} at step {step} "
                                     f"(seed {jobs[bad].seed}, job {bad})")
        optimizer.step()
        running += values

        # Validate all models in one grouped pass; each job keeps its best state (a job that stopped
        # early keeps its state and history as of its stop; the others go on).
        if is_validation_step(step, config):
            val_dice = grouped_volume_dice(net, val, device=device, amp_dtype=amp_dtype,
                                           channels_last=config.channels_last)
            n_loss = step - last_val
            last_val = step
            state = None
            for i in range(k):
                if selections[i].stopped:
                    continue
                steps_done[i] = step
                histories[i].append((step, float(running[i]) / n_loss, val_dice[i]))
                if log is not None:
                    log(i, step, histories[i][-1][1], val_dice[i])
                if selections[i].update(step, val_dice[i]):
                    state = net.state_dict() if state is None else state
                    best_states[i] = unpack_state(state, k, i, block)
            running.zero_()
            if all(s.stopped for s in selections):
                break
    seconds = time.perf_counter() - start

    results = []
    for i in range(k):
        model = build_unet(config)
        model.load_state_dict(best_states[i])
        model = model.to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.eval()
        results.append(TrainResult(model, selections[i].best_step, selections[i].best_dice, seconds / k,
                                   histories[i], steps_done=steps_done[i],
                                   images_seen=steps_done[i] * feeds[i].images_per_step(main)))
    return results


__all__ = ["GroupedUNet", "Job", "Plan", "UNet", "grouped_volume_dice", "pack_states", "plan", "train_unets",
           "unet_threads", "unpack_state"]
