"""A random source a generator owns, so its noise resumes bit-for-bit.

Noise drawn from torch's global generator depends on everything else that
touches it (data loading, other plugins, the device's own generator). A
generator that draws its training noise from a :class:`RandomSource` instead
carries that state in its own ``state_dict``, and a resumed run draws exactly
the numbers the uninterrupted run would have drawn, on any device.
"""

from __future__ import annotations

from typing import Any

import torch


class RandomSource:
    """A seeded CPU ``torch.Generator`` whose draws are moved to ``device``.

    Draws happen on the CPU (cheap for latents and augmentation parameters),
    so the same seed gives the same numbers on CPU, CUDA and MPS.

    Args:
        seed: the seed; None draws one from torch's global generator, so it
            follows the experiment seed the loop set before building models.
        device: where drawn tensors are moved.
    """

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu") -> None:
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.device = torch.device(device)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal draws of ``shape`` on ``device``."""
        return torch.randn(*shape, generator=self.generator).to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) draws of ``shape`` on ``device``."""
        return torch.rand(*shape, generator=self.generator).to(self.device)

    def randint(self, low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Integers in [low, high) of ``shape``, kept on the CPU (used for indexing)."""
        return torch.randint(low, high, shape, generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())  # a CUDA resume maps the checkpoint to the GPU
