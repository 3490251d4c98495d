"""The optimizer step every generator takes, and networks held fixed during another network's step.

A generator that trains several networks (G and D, a decoder and a segmenter)
updates each with the same few lines; here they are once::

    optimizer_step(self.opt_d, d_loss)                                  # D's update
    with frozen(self.discriminator):                                    # G's update through a fixed D
        g_loss = ...
        optimizer_step(self.opt_g, g_loss, ema=self.ema, net=self.g)    # and the EMA of G
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from toolkit.nn.ema import EMA


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, ema: EMA | None = None,
                   net: nn.Module | None = None, grad_clip: float = 0.0, zero_grad: bool = True) -> float | None:
    """One update: clear the gradients, ``loss.backward()``, clip, step, then move the EMA of ``net``.

    Args:
        optimizer: the optimizer of the network(s) ``loss`` trains.
        loss: the scalar to minimise.
        ema: the EMA to update after the step (None: none kept); ``net`` is the network it tracks.
        grad_clip: largest global gradient norm over the optimizer's parameters; 0 disables.
        zero_grad: False keeps gradients the caller has already put there (e.g. a hypergradient
            from an earlier ``backward``, after the caller's own ``zero_grad``).

    Returns:
        The gradient norm before clipping when ``grad_clip`` > 0, else None.
    """
    if zero_grad:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = None
    if grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = float(nn.utils.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    if ema is not None:
        ema.update(net)
    return norm


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Inside the block the modules' parameters require no gradient (a G step through a fixed D).

    Gradients still flow through the modules to their inputs; none accumulate in
    their parameters. Each parameter's ``requires_grad`` is restored on exit.
    None entries are skipped, so an optional network can be passed as it is.
    """
    params = [p for m in modules if m is not None for p in m.parameters()]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)
