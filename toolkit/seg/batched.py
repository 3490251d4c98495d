"""Training the K U-Nets of one evaluation together: spread over processes, or as one grouped network.

The Dice-gain protocol trains arms x seeds small U-Nets (the quick profile:
3 x 3 of 0.5M parameters at batch 16). A second intra-op thread buys nothing
at that size, so :func:`train_unets` has two ways to use a machine better:

- ``processes=N`` (CPU): the jobs are cut into N contiguous chunks, each
  trained in its own spawned process with one thread (on a 2-core CPU: both
  cores busy on different U-Nets; ``toolkit.seg.workers``). Within a process
  the jobs run one after another with :func:`toolkit.seg.train.train_unet`
  (``grouped=False``, the CPU default), so each result is bit-for-bit
  ``train_unet``'s at one thread.
- ``grouped=True``: the chunk is one network whose every convolution has
  ``groups=K`` (``toolkit.seg.grouped``, which says why that is the same
  training, job by job, up to summation order), trained by the same loop as
  ``train_unet``. This removes per-operator overhead (the win on a GPU, where
  one small U-Net cannot fill the device; not measured here, no GPU was
  available), but on a CPU it measured slower per model than one U-Net at a
  time (its convolution backward is the cost; likely cache footprint, K times
  one U-Net's; benchmarks/results/seg_speed.md). Hence the default
  ``grouped=None``: grouped on CUDA, one by one on a CPU.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import torch

from toolkit.data.slices import SliceSet
from toolkit.nn.unet import UNet
from toolkit.seg.grouped import (
    GroupedUNet,
    grouped_loss,
    grouped_volume_dice,
    pack_states,
    train_grouped,
    unpack_state,
)
from toolkit.seg.train import Feed, Pool, TrainResult, build_unet, train_unet
from toolkit.seg.workers import Plan, contiguous_chunks, plan, run_in_processes, unet_threads
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
            trained = train_grouped([jobs[i].feed for i in members], [jobs[i].seed for i in members], val, config,
                                    device, group_log, size)
            for i, result in zip(members, trained):
                results[i] = result
        return results
    results = []
    for i, job in enumerate(jobs):
        job_log = None if log is None else (lambda step, loss, dice, i=i: log(i, step, loss, dice))
        results.append(train_unet(job.pools, val, config, job.seed, device, log=job_log))
    return results


def _worker(jobs: list[Job], val: SliceSet, config: SegSettings, threads: int, deterministic: bool,
            grouped: bool, block: int) -> list[tuple]:
    """One process's share of :func:`train_unets` (plain data back: state dicts, not modules)."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    return [(r.model.state_dict(), r.best_step, r.best_val_dice, r.seconds, r.history, r.steps_done, r.images_seen)
            for r in _train_here(jobs, val, config, torch.device("cpu"), None, grouped, block)]


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
    chunks = [[jobs[i] for i in chunk] for chunk in contiguous_chunks(len(jobs), processes)]
    labels = [f"U-Net seeds {[job.seed for job in chunk]}" for chunk in chunks]
    outputs = run_in_processes(_worker, chunks, (val, config, threads, torch.are_deterministic_algorithms_enabled(),
                                                 grouped, block), labels)
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


__all__ = ["GroupedUNet", "Job", "Plan", "UNet", "grouped_loss", "grouped_volume_dice", "pack_states", "plan",
           "train_unets", "unet_threads", "unpack_state"]
