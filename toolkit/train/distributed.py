"""Data-parallel training under ``torchrun`` without touching plugin code.

Generators own their networks and optimizers, so the loop cannot wrap a
single model in DDP. Instead it (1) broadcasts every network's parameters and
buffers from rank 0 after construction and (2) registers a pre-step hook on
every optimizer that averages the gradients of that optimizer's parameters
across ranks. That is what DDP computes for data parallelism, for any number
of networks and any update order (a GAN's D and G steps included). BatchNorm
statistics stay per rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from toolkit.runtime import Runtime, resolve_channels_last, resolve_device, resolve_precision, set_threads


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    NCCL on CUDA, gloo elsewhere (so a 2-process CPU run works for tests).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def broadcast_modules(modules: dict[str, torch.nn.Module]) -> None:
    """Make every rank start from rank 0's weights."""
    for name in sorted(modules):
        for tensor in list(modules[name].parameters()) + list(modules[name].buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients_before_step(optimizers: dict[str, torch.optim.Optimizer]) -> list:
    """Register hooks that all-reduce (mean) gradients right before each ``step()``."""
    world = dist.get_world_size()

    def hook(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    # Keep collectives aligned across ranks: a rank without a grad sends zeros.
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= world

    return [opt.register_step_pre_hook(hook) for _, opt in sorted(optimizers.items())]


def setup_runtime(device: str, precision: str, channels_last: str, threads: int | None):
    """Device (joining a torchrun process group if there is one), threads, precision and memory layout.

    Returns:
        (Runtime, DistInfo): the second says this process's rank; a single process unless started by torchrun.
    """
    dev = resolve_device(device)
    dist_info = init_from_env(dev.type)
    if dist_info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(dev)
    n = set_threads(threads)
    return Runtime(dev, n, resolve_precision(precision, dev), resolve_channels_last(channels_last, dev)), dist_info
