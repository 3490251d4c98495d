"""A plain 2D U-Net: the downstream segmenter and a feature network.

Kept deliberately ordinary (two 3x3 convolutions per level, max-pool down,
transposed convolution up, skip connections by concatenation) so that a Dice
gain measured with it says something about the data, not about the network.
With ``base_channels=16`` and ``depth=4`` it has about 1.9M parameters and
trains at 64 x 64 on a CPU in a few minutes.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "group", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"U-Net norm must be one of {', '.join(NORMS)}, got {kind!r}")


class DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) twice; the conv has no bias when a norm follows."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """2D U-Net returning one logit map per output channel.

    Args:
        in_channels: image channels.
        out_channels: output channels (1: the gland's logit).
        base_channels: channels of the first level; each level down doubles them.
        depth: number of 2x downsamplings; the input side must be divisible by
            ``2 ** depth``.
        norm: ``batch``, ``instance``, ``group`` or ``none``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 16,
        depth: int = 4,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"U-Net depth must be at least 1, got {depth}")
        if base_channels < 1:
            raise ValueError(f"U-Net base_channels must be positive, got {base_channels}")
        _norm(norm, 8)  # validates the name before building anything
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.down.append(DoubleConv(channels, width, norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], norm)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2))
            self.up_conv.append(DoubleConv(2 * widths[i - 1], widths[i - 1], norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.feature_channels = widths[-1]

    def _check(self, x: torch.Tensor) -> None:
        factor = 2**self.depth
        if x.dim() != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(
                f"U-Net of depth {self.depth} needs input [N, C, H, W] with H and W divisible by "
                f"{factor}, got shape {tuple(x.shape)}"
            )

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._check(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        return self.bottleneck(x), skips

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck features [N, base_channels * 2**depth, H / 2**depth, W / 2**depth].

        A feature space learned for the gland, used by the ``seg`` FID/KID
        variant; average-pool over the spatial axes for one vector per image.
        """
        return self._encode(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self._encode(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = conv(torch.cat([up(x), skip], dim=1))
        return self.head(x)
