"""Convolutional encoder and decoder of (image, mask) pairs, shared by the VAE and VAE-GAN.

The pair is modelled jointly: the encoder reads image and mask as channels,
the decoder writes image channels (tanh, in [-1, 1]) and one channel of mask
logits, so every sample comes with its own mask. The latent is a vector
(not a feature map), so sampling is simply ``decoder(randn(n, z_dim))``.

The number of down/up-sampling stages follows the image size: features go
down to a 4 x 4 map (64 -> 4 stages, 128 -> 5, 256 -> 6). GroupNorm rather
than BatchNorm keeps the networks independent of batch composition, so
training and sampling behave the same and one sample does not depend on the
others drawn with it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toolkit.nn.pairs import decode_pair
from toolkit.types import Batch

BOTTLENECK = 4  # side of the smallest feature map
MASK_PRIOR_LOGIT = -2.0  # initial mask logit bias: sigmoid(-2) = 0.12 foreground


def n_stages(image_size: int) -> int:
    """Down/up-sampling stages between ``image_size`` and the 4 x 4 bottleneck."""
    if image_size < 8 or not math.log2(image_size).is_integer():
        raise ValueError(f"image_size must be a power of two >= 8 (64, 128, 256), got {image_size}")
    return int(math.log2(image_size // BOTTLENECK))


def stage_channels(image_size: int, base_channels: int, max_channels: int) -> list[int]:
    """Channels per resolution, from full resolution down to 4 x 4 (doubling, capped)."""
    return [min(base_channels * 2**i, max_channels) for i in range(n_stages(image_size) + 1)]


def _norm(channels: int) -> nn.GroupNorm:
    groups = math.gcd(channels, 8)
    return nn.GroupNorm(groups, channels)


def _conv_block(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2),
                         _norm(c_out), nn.SiLU())


class ConvEncoder(nn.Module):
    """(image, mask) -> (mu, logvar) of a diagonal Gaussian over ``z_dim`` latents.

    One strided 4 x 4 convolution per stage: with channels doubling as the
    resolution halves, every stage costs about the same, so the encoder is
    cheap next to the decoder and discriminator.

    Args:
        in_channels: image channels + 1 mask channel.
        image_size: input side (a power of two >= 8).
        z_dim: latent dimensions.
        base_channels: channels at full resolution; doubled per stage.
        max_channels: channel cap.
    """

    def __init__(self, in_channels: int, image_size: int, z_dim: int, base_channels: int = 16,
                 max_channels: int = 128) -> None:
        super().__init__()
        chans = stage_channels(image_size, base_channels, max_channels)
        layers: list[nn.Module] = [_conv_block(in_channels, chans[0])]
        layers += [_conv_block(c_in, c_out, 4, 2) for c_in, c_out in zip(chans[:-1], chans[1:])]
        layers += [nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.to_stats = nn.Linear(chans[-1] * BOTTLENECK**2, 2 * z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.features(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)


class ConvDecoder(nn.Module):
    """z -> (image in [-1, 1], mask logits).

    Per stage: upsampling (nearest-neighbour, or bilinear for smoother
    interpolation) then a 3 x 3 convolution (no checkerboard artefacts from
    transposed convolutions); ``depth`` adds 3 x 3 convolutions per stage for
    capacity at a proportional cost.

    Args:
        out_image_channels: image channels of the output (one mask channel is added).
        image_size: output side (a power of two >= 8).
        z_dim: latent dimensions.
        base_channels: channels at full resolution; doubled per stage going down.
        max_channels: channel cap.
        depth: 3 x 3 convolutions per stage (>= 1).
        upsample: ``"nearest"`` or ``"bilinear"``.
    """

    def __init__(self, out_image_channels: int, image_size: int, z_dim: int, base_channels: int = 16,
                 max_channels: int = 128, depth: int = 1, upsample: str = "nearest") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"decoder depth must be >= 1, got {depth}")
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"decoder upsample must be 'nearest' or 'bilinear', got {upsample!r}")
        chans = stage_channels(image_size, base_channels, max_channels)[::-1]  # 4x4 -> full size
        self.out_image_channels = out_image_channels
        self.from_z = nn.Sequential(nn.Linear(z_dim, chans[0] * BOTTLENECK**2),
                                    nn.Unflatten(1, (chans[0], BOTTLENECK, BOTTLENECK)),
                                    _norm(chans[0]), nn.SiLU())
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            align = None if upsample == "nearest" else False  # nearest takes no align_corners
            layers += [nn.Upsample(scale_factor=2, mode=upsample, align_corners=align), _conv_block(c_in, c_out)]
            layers += [_conv_block(c_out, c_out) for _ in range(depth - 1)]
        head = nn.Conv2d(chans[-1], out_image_channels + 1, 3, padding=1)
        with torch.no_grad():
            # Start the mask at "mostly background" (the gland covers ~10% of a slice,
            # RetinaNet-style prior init) instead of 50/50, so the first steps go to shape.
            head.bias[out_image_channels:] = MASK_PRIOR_LOGIT
        self.body = nn.Sequential(*layers, head)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.body(self.from_z(z))
        k = self.out_image_channels
        return torch.tanh(out[:, :k]), out[:, k:]


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, with ``noise`` = eps drawn by the caller (for resumable runs)."""
    return mu + torch.exp(0.5 * logvar) * noise


class FittedPrior(nn.Module):
    """A full-covariance Gaussian fitted to the aggregate posterior, to sample from.

    With a few dozen training slices and a per-pixel KL, the encoder's
    aggregate posterior ``q(z) = mean_x q(z|x)`` does not fill ``N(0, I)``:
    most prior draws land in "holes" the decoder never saw and decode to
    mush. Ex-post density estimation (Ghosh et al., ICLR 2020, "From
    Variational to Deterministic Autoencoders") samples instead from a
    density fitted to the latents of the training data. Here that density is
    the moment-matched Gaussian of ``q(z)``: mean of the encoder means, and
    covariance ``Cov(mu) + mean(sigma^2)`` (law of total variance), tracked
    during training as running moments so no extra pass over the data is
    needed. The running average is cumulative at first and exponential with
    ``momentum`` later, so it follows the encoder as it changes. All moments
    are buffers: they are in the ``state_dict`` and a resumed run samples
    exactly like an uninterrupted one.

    Args:
        z_dim: latent dimensions.
        momentum: weight of the old moments per update once past the
            cumulative phase (0.99 averages about the last 100 batches).
    """

    def __init__(self, z_dim: int, momentum: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"fitted prior momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        # float32 buffers on the model's device (MPS has no float64); the
        # factorisation in ``transform`` runs in float64 on the CPU.
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(z_dim))
        self.register_buffer("second_moment", torch.eye(z_dim))
        self.register_buffer("posterior_var", torch.zeros(z_dim))

    @torch.no_grad()
    def update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Fold one batch of posteriors ``N(mu, exp(logvar))`` into the running moments."""
        mu = mu.detach().float()
        weight = max(1.0 / (float(self.count) + 1.0), 1.0 - self.momentum)
        with torch.autocast(device_type=mu.device.type, enabled=False):  # fp32 moments under bf16 training
            self.mean.lerp_(mu.mean(0), weight)
            self.second_moment.lerp_(mu.T @ mu / len(mu), weight)
            self.posterior_var.lerp_(logvar.detach().float().exp().mean(0), weight)
        self.count += 1

    def covariance(self) -> torch.Tensor:
        """``Cov(mu) + diag(mean sigma^2)`` (float64, CPU): the covariance of the aggregate posterior."""
        mean = self.mean.detach().cpu().double()
        cov = self.second_moment.detach().cpu().double() - torch.outer(mean, mean)
        return 0.5 * (cov + cov.T) + torch.diag(self.posterior_var.detach().cpu().double())

    def transform(self, eps: torch.Tensor) -> torch.Tensor:
        """Map standard normal draws ``eps`` [N, z_dim] to draws of the fitted Gaussian.

        Works on the CPU in float64 and returns ``eps``'s dtype and device.
        Before any update (an untrained model) this is the identity, i.e. ``N(0, I)``.
        """
        if float(self.count) == 0:
            return eps
        cov = self.covariance()
        jitter = 1e-6 * float(cov.diagonal().mean().clamp_min(1e-12))
        eye = torch.eye(len(cov), dtype=cov.dtype)
        chol, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if int(info) != 0:  # not positive definite in float: use the symmetric square root
            vals, vecs = torch.linalg.eigh(cov)
            chol = vecs * vals.clamp_min(jitter).sqrt()
        z = self.mean.detach().cpu().double() + eps.detach().cpu().double() @ chol.T
        return z.to(device=eps.device, dtype=eps.dtype)


def draw_latents(eps: torch.Tensor, temperature: float, prior: FittedPrior | None) -> torch.Tensor:
    """Latents from standard-normal ``eps``: scaled by ``temperature``, then mapped by a fitted prior (if any)."""
    eps = eps * temperature
    return prior.transform(eps) if prior is not None else eps


@torch.no_grad()
def decode_pairs(decoder: ConvDecoder, z: torch.Tensor, device: torch.device, autocast, chunk: int = 256) -> Batch:
    """Decode latents in chunks into CPU (image in [-1, 1], mask in {0, 1}) pairs.

    Args:
        autocast: a callable returning the generator's mixed-precision context.
    """
    images, masks = [], []
    for part in z.split(chunk):
        with autocast():
            image, logits = decoder(part.to(device))
        image, mask = decode_pair(image.float(), logits.float())
        images.append(image.cpu())
        masks.append(mask.cpu())
    return Batch(torch.cat(images), torch.cat(masks), None)
