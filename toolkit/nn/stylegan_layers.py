"""StyleGAN2's generic layers: equalised learning rate, modulated convolution, minibatch std.

Building blocks of a StyleGAN2-style generator and discriminator (Karras et
al., 2018 and CVPR 2020), apart from any one architecture: fully connected
and convolution layers with an equalised learning rate, the pixel norm
(``normalize_2nd_moment``), the modulated / demodulated convolution in
StyleGAN2's "non-fused" form (plain PyTorch, no custom ops) and the minibatch
standard deviation feature. They live here so that another StyleGAN-family
plugin reuses them; the ``stylegan_lite`` generator
(``plugins/generators/stylegan_lite.py``, ``docs/generators_stylegan_lite.md``)
is their user and holds the model (mapping, synthesis, discriminator, losses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)  # keeps the activation variance through leaky ReLU(0.2)


# Layers with an equalised learning rate (Karras et al., 2018): weights are drawn from N(0, 1)
# and scaled at run time by He's constant, so Adam's steps are the same size in every layer.


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate and an optional leaky ReLU.

    ``lr_mul`` < 1 slows the layer down (the mapping network uses 0.01).
    """

    def __init__(self, c_in: int, c_out: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((c_out,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(c_in)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * LRELU_GAIN if self.activation else x


class EqualConv2d(nn.Module):
    """Convolution (stride 1, same padding) with equalised learning rate and an optional leaky ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(c_in * kernel * kernel)
        self.padding = kernel // 2
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        return F.leaky_relu(x, 0.2) * LRELU_GAIN if self.activation else x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row to unit mean square (StyleGAN's pixel norm of z and of the condition embedding)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class ModulatedConv2d(nn.Module):
    """A convolution whose input channels are scaled by a style, with optional weight demodulation.

    With style ``s`` (an affine map of w, bias 1) the effective weight is
    ``w'_oik = w_oik * s_i`` and, demodulated, ``w''_oik = w'_oik / sqrt(sum_ik w'_oik^2)``
    (StyleGAN2, eq. 1-3). Here the style scales the activations and the
    demodulation scales the outputs, which is the same arithmetic as a
    per-sample (grouped) convolution but runs as one ordinary batched
    convolution on any backend.
    """

    def __init__(self, c_in: int, c_out: int, w_dim: int, kernel: int, demodulate: bool = True) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.weight_gain = 1.0 / math.sqrt(c_in * kernel * kernel)
        self.padding = kernel // 2
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.affine(w)  # [N, c_in]
        weight = self.weight * self.weight_gain
        x = F.conv2d(x * style[:, :, None, None].to(x.dtype), weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # sigma_o = sqrt(sum_i s_i^2 * sum_k w_oik^2): the output std for unit-variance inputs.
            sigma_sq = style.square() @ weight.square().sum(dim=(2, 3)).t()  # [N, c_out]
            x = x * torch.rsqrt(sigma_sq + 1e-8)[:, :, None, None].to(x.dtype)
        return x


# Discriminator features -------------------------------------------------------------------


def minibatch_std(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append the mean std over groups of samples as one feature map (Karras et al., 2018).

    Sample ``i`` is grouped with ``i % (n / g)``; ``g`` is the largest divisor
    of the batch size not above ``group_size``, so any batch size works.
    """
    n, c, h, w = x.shape
    g = min(group_size, n)
    while n % g:
        g -= 1
    y = x.float().reshape(g, -1, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # [n / g]
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)
