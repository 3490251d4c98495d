"""Where and how the toolkit computes: device, precision, threads, determinism. One module for all of it.

Generator training and the segmenter share these: one bf16 detector, one
meaning of ``precision: auto`` (bf16 where the hardware runs it natively,
fp32 elsewhere), one autocast helper, one thread-count context manager.

A U-Net's Dice can move by several points with nothing but a different
thread count (the order of floating-point sums changes), so evaluations fix
the count, record it, and run with deterministic algorithms on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def machine_threads() -> int:
    """CPU cores this process may use (respects affinity masks and cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, or None where there is no such file."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0.0), sum(fields[:8])


def idle_cores(interval: float = 0.2, sample=_cpu_times) -> float | None:
    """How many cores were idle during a short sample (None: not measurable on this system)."""
    first = sample()
    time.sleep(interval)
    second = sample()
    if first is None or second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def default_threads(sample=_cpu_times) -> int:
    """The cores this process may use that are idle now (at least 1).

    Measured (benchmarks/results/threads_busy.md): with another process on
    every core, a 2-thread vaegan step ran 18x slower than 1 thread (OpenMP
    threads wait for each other while the other process holds their cores),
    while on a quiet machine 2 threads were 1.7x faster. So threads follow
    the idle cores at start, not the core count.
    """
    cores = machine_threads()
    idle = idle_cores(sample=sample)
    if idle is None:
        return cores
    return max(1, min(cores, int(idle + 0.5)))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: the idle cores, see :func:`default_threads`); returns the value used."""
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1 or null, got {threads}")
    torch.set_num_threads(n)
    return n


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable explicit choice is an error."""
    mps = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device={name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r}: CUDA is not available here; use auto or cpu")
    if device.type == "mps" and not mps:
        raise ValueError(f"train.device={name!r}: MPS is not available here; use auto or cpu")
    return device


def resolve_channels_last(setting: str | bool, device: torch.device) -> bool:
    """``on``/``off``/``auto`` (auto: on for CUDA) or a plain bool."""
    if isinstance(setting, bool):
        return setting
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"channels_last={setting!r}: expected auto, on or off")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX).

    oneDNN's own check is used where torch exposes it; /proc/cpuinfo flags otherwise.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: None means plain fp32.

    ``auto`` picks bf16 where the hardware runs it natively (CUDA with bf16,
    CPUs with AVX512-BF16/AMX) and fp32 elsewhere, where emulated bf16 is slower.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if device.type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        native = cpu_supports_bf16()
    else:
        native = False
    if precision == "fp32" or (precision == "auto" and not native):
        return None
    if precision == "bf16" and not native:
        warnings.warn(f"precision bf16 on {device} without native bf16 support: expect it to be slower "
                      "than fp32", stacklevel=2)
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast context for ``dtype`` (a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class Runtime:
    """Where one process computes, decided once from the settings and the machine."""

    device: torch.device
    threads: int
    amp_dtype: torch.dtype | None
    channels_last: bool


@contextlib.contextmanager
def reproducible(threads: int | None, device: torch.device | str = "cpu") -> Iterator[int]:
    """Fix torch's CPU thread count and use deterministic algorithms; restore both afterwards.

    Args:
        threads: CPU threads to use; None keeps the current count.
        device: deterministic algorithms are switched on for CPU work only (on
            CUDA they need a cuBLAS workspace setting the caller controls).

    Yields:
        The thread count in effect, to record with the results.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive integer or null, got {threads}")
    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if torch.device(device).type == "cpu":
            torch.use_deterministic_algorithms(True)
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_det, warn_only=previous_warn)
