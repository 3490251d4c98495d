"""Feature spaces for the distribution metrics: seg, random, inception and radiomic.

Every extractor maps grey slices [N, H, W] in [-1, 1] to float64 features
[N, D] and has a ``fingerprint`` that changes whenever its features would,
so cached real-set features are never reused across different networks.

- ``seg``: the bottleneck of the real-data baseline U-Net (seed 0, from
  ``ctx.baselines``: the same network ``dice_gain``'s baseline arm uses,
  whichever runs first), global-average-pooled.
  Domain-specific and needs no download; the default.
- ``random``: a fixed, seeded, randomly initialised CNN. Random features rank
  generators surprisingly well (Lee et al. 2023) and need no training: the
  CI and sanity reference. Its weights come from NumPy's PCG64 uniform
  stream, so they are identical on every machine and torch version.
- ``inception``: the standard FID network (see ``toolkit.metrics.inception``).
- ``radiomic``: pyradiomics features of each slice and its gland region, the
  Fréchet Radiomic Distance's space (see ``toolkit.metrics.radiomics``; the
  ``[frd]`` extra). It needs masks, so evaluators extract it through
  ``radiomics.radiomic_pair``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from toolkit.metrics.inception import build_fid_inception, find_weights

if TYPE_CHECKING:
    from toolkit.metrics.radiomics import RadiomicExtractor
    from toolkit.plugin import EvalContext

FEATURE_SPACES = ("seg", "random", "inception", "radiomic")


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a module's parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureExtractor:
    """Batched, no-grad feature extraction with a fingerprint.

    Args:
        name: the feature space ("seg", "random", "inception"), used in metric names.
        fn: maps a float32 batch [B, 1, H, W] on ``device`` to features [B, D] (or [B, D, h, w],
            which is average-pooled).
        fingerprint: identifies the network and its weights.
        device: where ``fn`` runs.
        batch_size: slices per forward pass.
    """

    def __init__(self, name: str, fn: Any, fingerprint: str, device: torch.device | str = "cpu",
                 batch_size: int = 256) -> None:
        self.name = name
        self.fn = fn
        self.fingerprint = fingerprint
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3:
            raise ValueError(f"feature extraction takes grey slices [N, H, W], got shape {images.shape}")
        out = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(images[start:start + self.batch_size])[:, None].to(self.device)
            f = self.fn(x)
            if isinstance(f, (list, tuple)):
                f = f[-1]
            if f.dim() == 4:
                f = f.mean(dim=(2, 3))
            out.append(f.reshape(len(x), -1).double().cpu())
        return torch.cat(out).numpy()


class RandomConvNet(nn.Module):
    """Four stride-2 3x3 conv + ReLU stages; features are each stage's global average, concatenated.

    Pooling every stage keeps fine texture (first stages) and coarse layout
    (last stages) in one 480-d vector, below the N of a typical evaluation so
    the covariance stays full rank.
    """

    def __init__(self, seed: int = 0, channels: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        convs = []
        c_in = 1
        for c_out in channels:
            conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            bound = np.sqrt(6.0 / (c_in * 9))  # He uniform: keeps activations' scale through ReLUs
            weight = (rng.random(conv.weight.shape) * 2 - 1) * bound
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(weight))
                conv.bias.zero_()
            convs.append(conv)
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            pooled.append(x.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)


def random_extractor(seed: int = 0, device: torch.device | str = "cpu") -> FeatureExtractor:
    net = RandomConvNet(seed).eval().to(device)
    return FeatureExtractor("random", net, f"random-v1-{module_fingerprint(net)}", device)


def seg_extractor(ctx: EvalContext) -> FeatureExtractor:
    """Bottleneck features of the seed-0 baseline U-Net of ``ctx.baselines``."""
    model = ctx.baselines.model(0)
    if not callable(getattr(model, "encode", None)):
        raise TypeError(f"the baseline segmenter is a {type(model).__name__} without an encode(x) method; "
                        "features='seg' needs the U-Net's encoder")
    model.eval()
    params = list(model.parameters())
    device = params[0].device if params else ctx.device
    fingerprint = f"seg-{module_fingerprint(model)}" if isinstance(model, nn.Module) else f"seg-{id(model)}"
    return FeatureExtractor("seg", model.encode, fingerprint, device)


def inception_extractor(weights: str | None = None, device: torch.device | str = "cpu") -> FeatureExtractor:
    path = find_weights(weights)
    net = build_fid_inception(path).to(device)

    def features(x: torch.Tensor) -> torch.Tensor:
        return net(x.expand(-1, 3, -1, -1))[0]  # grey -> 3 identical channels

    # The file's verified hash prefix names the weights; the version tag names this preprocessing.
    return FeatureExtractor("inception", features, f"inception-v1-{path.name}", device, batch_size=50)


def build_extractor(features: str, ctx: EvalContext, seed: int = 0,
                    inception_weights: str | None = None) -> FeatureExtractor | RadiomicExtractor:
    """The extractor for a feature space, built once per evaluation (``ctx.memo``) for all evaluators.

    Args:
        features: "seg", "random", "inception" or "radiomic".
        ctx: the evaluation context (device, memo, baseline U-Nets).
        seed: the random CNN's seed (ignored by the other spaces).
        inception_weights: a path to the Inception weights, or None for the torch hub cache.
    """
    if features not in FEATURE_SPACES:
        raise ValueError(f"unknown features {features!r}; valid: {', '.join(FEATURE_SPACES)}")
    key = f"quality_extractor:{features}"
    key += f":seed={seed}" if features == "random" else ""
    key += f":weights={inception_weights}" if features == "inception" else ""

    def build() -> FeatureExtractor | RadiomicExtractor:
        if features == "radiomic":
            from toolkit.metrics.radiomics import RadiomicExtractor  # imports the optional pyradiomics

            return RadiomicExtractor()
        if features == "random":
            return random_extractor(seed, ctx.device)
        if features == "seg":
            return seg_extractor(ctx)
        return inception_extractor(inception_weights, ctx.device)

    return ctx.memo.get_or_compute(key, build)
