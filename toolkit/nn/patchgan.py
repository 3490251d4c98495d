"""A spectral-norm PatchGAN discriminator that also returns its features.

A PatchGAN (Isola et al., CVPR 2017, "Image-to-Image Translation with
Conditional Adversarial Networks") scores overlapping patches instead of the
whole image, which suits texture and edge sharpness, the things a VAE blurs.
Spectral normalisation of every convolution (Miyato et al., ICLR 2018) keeps
D Lipschitz-bounded and training stable without batch statistics, so D
behaves the same at any batch size. The intermediate activations are returned
too, for a feature-matching loss (Salimans et al., 2016; Larsen et al., 2016).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn_wrap


def _conv(c_in: int, c_out: int, kernel: int, stride: int, sn: bool = True) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2)
    return sn_wrap(conv) if sn else conv


class Blur(nn.Module):
    """A fixed 3 x 3 binomial low-pass ([1, 2, 1] outer itself, / 16) per channel, reflect-padded.

    Before a strided convolution it anti-aliases the downsampling (Zhang, ICML 2019, "Making
    convolutional networks shift-invariant again"; StyleGAN2 filters its resampling alike), so
    D's gradient carries no period-2 pattern back to the generator, the grid texture a
    strided D paints into generated images.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3).clone())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        return nn.functional.conv2d(x, self.kernel.to(x.dtype), groups=self.channels)


class PatchGAN(nn.Module):
    """Strided spectral-norm convolutions down to a map of patch logits.

    Args:
        in_channels: input channels (image channels + 1 mask channel).
        image_size: input side; sets the number of downsampling stages so the
            logit map is ``image_size / 2**n_down`` (8 x 8 for 64 x 64 by default).
        base_channels: channels after the first convolution; doubled per stage.
        max_channels: channel cap.
        patch_size: side of the output logit map; the receptive field of each
            logit then covers about ``image_size / patch_size * 2`` pixels.
        spectral_norm: where spectral normalisation applies: ``"all"``
            (every convolution, the head included: the default), ``"body"``
            (all but the 1-channel head, so the logits' scale is free while
            the features stay Lipschitz-bounded), or ``"none"`` (plain
            convolutions; regularise D otherwise, e.g. with an R1 penalty).
        blur: low-pass (:class:`Blur`) before every strided convolution.
    """

    def __init__(
        self,
        in_channels: int = 2,
        image_size: int = 64,
        base_channels: int = 32,
        max_channels: int = 256,
        patch_size: int = 8,
        spectral_norm: str = "all",
        blur: bool = False,
    ) -> None:
        super().__init__()
        if spectral_norm not in ("all", "body", "none"):
            raise ValueError(f"PatchGAN spectral_norm must be 'all', 'body' or 'none', got {spectral_norm!r}")
        body_sn, head_sn = spectral_norm != "none", spectral_norm == "all"
        if patch_size < 1 or image_size % patch_size or not math.log2(image_size // patch_size).is_integer():
            raise ValueError(
                f"PatchGAN patch_size {patch_size} must divide image_size {image_size} by a power of two"
            )
        n_down = int(math.log2(image_size // patch_size))
        blocks: list[nn.Module] = []
        c_in, c_out = in_channels, base_channels
        for i in range(max(n_down, 1)):
            stride = 2 if i < n_down else 1
            pre = [Blur(c_in)] if blur and stride == 2 else []
            blocks.append(nn.Sequential(*pre, _conv(c_in, c_out, 4 if stride == 2 else 3, stride, body_sn),
                                        nn.LeakyReLU(0.2, inplace=True)))
            c_in, c_out = c_out, min(c_out * 2, max_channels)
        blocks.append(nn.Sequential(_conv(c_in, c_in, 3, 1, body_sn), nn.LeakyReLU(0.2, inplace=True)))
        self.blocks = nn.ModuleList(blocks)
        self.head = _conv(c_in, 1, 3, 1, head_sn)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Patch logits ``[N, 1, p, p]`` and the activations of every block."""
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.head(x), features
