"""Where and how the segmenter computes: threads, determinism, precision.

A U-Net's Dice can move by several points with nothing but a different
thread count (the order of floating-point sums changes), so evaluations fix
the count, record it, and run with deterministic algorithms on the CPU.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


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
