"""Atomic checkpoints, loaded with ``weights_only=True`` (never unpickling code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from toolkit.io import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read as plain weights; the message names the file and the cause."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a crash leaves the previous checkpoint or the new one."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint of plain tensors and containers; anything else is refused, not executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        # torch's own message suggests weights_only=False, which would run code from the file: never say that.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            first = "it holds objects other than plain weights (tensors, numbers, lists, dicts)"
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {first}. It was not written by this "
                              "version of ganseg or is damaged; it is never loaded unsafely") from None
