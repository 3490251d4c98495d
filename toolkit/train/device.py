"""Device, precision and thread settings, decided from the machine rather than constants."""

from __future__ import annotations

import contextlib
import os

import torch


def machine_threads() -> int:
    """CPU cores this process may use (respects affinity masks and cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: the machine's cores); returns the value used."""
    n = machine_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"train.threads must be >= 1 or null, got {threads}")
    torch.set_num_threads(n)
    return n


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r}: CUDA is not available here; use auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"train.device={name!r}: MPS is not available here; use auto or cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when the CPU runs bf16 matrix work natively (AVX512-BF16 or AMX)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability in ("AVX512_BF16", "AMX") or "AMX" in capability or "BF16" in capability


def resolve_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: auto = bf16 on CUDA that supports it, else off.

    fp16 is not offered: it needs loss scaling inside each generator's own
    optimizer steps, which bf16 does not.
    """
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    raise ValueError(f"train.amp={setting!r}: expected auto, off or bf16")


def resolve_channels_last(setting: str, device: torch.device) -> bool:
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"train.channels_last={setting!r}: expected auto, on or off")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Temporarily set torch's thread count (None: leave it)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
