"""Segmentation in the loop: a mask-to-image generator trained by what a segmenter learns from its pairs.

GenSeg's idea (Zhang et al., Nature Communications 2025, multi-level
optimisation), as an option any ``needs_masks`` generator can switch on:

1. a small segmenter ``S`` (parameters theta) takes ``k`` differentiable SGD
   steps on a batch of the generator's pairs ``(G_phi(m, z), m)``, for masks
   ``m`` that are deformed real training masks:
   ``theta' = theta - lr * grad_theta L(S_theta(G_phi(m, z)), m)``;
2. the stepped segmenter is scored on a batch of real *training* pairs held
   out from that step (every ``holdout_every``-th slice of each training
   patient: never a validation or test patient): ``L_out = L(S_theta'(x), y)``;
3. ``G`` receives ``d L_out / d phi``, the hypergradient: images that teach
   ``S`` something that holds on real pairs are rewarded;
4. ``S`` also trains normally (Adam) on real plus synthetic pairs, so it stays
   a useful teacher rather than a network frozen at its initialisation.

How it differs from pix2pix's segmentation consistency: there a frozen
network must *recognise* the mask in the rendering (the image must show its
mask); here the rendering is judged by what a segmenter *learns* from it
(the pair must be useful training data), which is what Dice gain measures.

``L_out`` depends on ``phi`` only through ``theta'``, so the MAML-style first
order approximation (treat ``theta'`` as a constant) gives ``G`` exactly no
gradient. The two orders offered here both keep the mixed derivative
``d^2 L_in / d phi d theta``:

- ``second``: the inner steps stay in the graph (``torch.func.functional_call``
  with ``create_graph=True``) and autograd differentiates through them: exact.
- ``first``: the finite-difference form of DARTS (Liu et al., ICLR 2019,
  eq. 7), which needs first derivatives only:
  ``d L_out / d phi ~ -lr * (grad_phi L_in(theta + eps v) - grad_phi L_in(theta - eps v)) / (2 eps)``
  with ``v = grad_theta' L_out`` and ``eps = epsilon / |v|``; the two input
  gradients are taken at ``S``'s input and pushed through ``G`` once. Exact
  for an ``L_in`` quadratic in theta (the linear test case), close otherwise;
  with ``k > 1`` the first ``k - 1`` steps are taken as constants
  (truncated to the last step).

Both return a *surrogate* loss whose gradient with respect to ``G``'s
parameters is the hypergradient, so the generator backpropagates it like any
other term. The default is ``first``: at the quick profile's sizes (pix2pix,
64 px, batch 16, bf16, 1 thread) a loop step adds 0.50 s to a 0.21 s G step,
``second`` adds 0.61 s; on one batch the two hypergradients have the same
norm (ratio 1.0001) and a cosine of 0.78 (docs/generators_pix2pix.md).

Wiring, in a generator (the core layers keep this module free of data imports,
so the mask source's class is handed in)::

    self.seg_loop = SegLoop(spec, device, loss_fn=dice_bce_loss)    # in __init__
    self.seg_loop.attach(ctx.train, DeformedMasks)                   # in setup()
    out = self.seg_loop.step(render, n)                              # in train_step
    (weight * out.hyper.surrogate).backward(inputs=g_params)         # with G's other terms
    self.seg_loop.train_segmenter(out.synthetic)                     # after G's backward

Under torch.distributed, ``S`` trains on each rank from the same random
stream; its gradients are not averaged across ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from toolkit.nn.rng import RandomSource
from toolkit.nn.unet import UNet
from toolkit.types import Batch, DataSpec

if TYPE_CHECKING:
    from toolkit.data.masks import MaskSource
    from toolkit.data.slices import SliceSet

Order = Literal["first", "second"]
#: A segmentation loss: (logits, target) -> scalar.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: A generator's rendering: (masks, cond, generator for its latents) -> images, differentiable in G's parameters.
Render = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
Params = dict[str, torch.Tensor]


def holdout_split(train: SliceSet, every: int = 4) -> tuple[SliceSet, SliceSet]:
    """(fit, held) slices of the training patients: every ``every``-th slice of each patient is held out.

    Slices of every patient land on both sides, so the held-out pairs judge a
    segmenter on the same patients' anatomy without ever being trained on.
    """
    rows = np.arange(len(train))
    order = np.zeros(len(train), dtype=np.int64)
    for patient in train.patients():
        mine = rows[train.patient == patient]
        order[mine[np.argsort(train.slice_index[mine], kind="stable")]] = np.arange(len(mine))
    held = order % every == every // 2
    if held.all() or not held.any():
        raise ValueError(f"too few training slices ({len(train)}) to hold out every {every}th slice of each patient")
    return train.select(rows[~held]), train.select(rows[held])


def sgd_steps(segmenter: nn.Module, params: Params, image: torch.Tensor, target: torch.Tensor, loss_fn: LossFn,
              lr: float, steps: int, create_graph: bool) -> tuple[Params, torch.Tensor | None]:
    """``params`` after ``steps`` SGD steps on (image, target), and the loss before the first step (None if 0).

    With ``create_graph`` the steps stay differentiable (second order).
    """
    first = None
    for _ in range(steps):
        loss = loss_fn(functional_call(segmenter, params, (image,)), target)
        first = loss if first is None else first
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads, strict=True)}
    return params, first


@dataclass
class HyperStep:
    """One inner-outer step.

    Attributes:
        surrogate: a scalar whose gradient w.r.t. the generator's parameters is the hypergradient
            (its value is only meaningful for ``second``, where it is the outer loss itself).
        inner: S's loss on the synthetic pairs before its step.
        before / after: S's loss on the held-out real pairs before and after its step.
    """

    surrogate: torch.Tensor
    inner: float
    before: float
    after: float


def _leaves(params: Params) -> Params:
    return {name: p.detach().requires_grad_(True) for name, p in params.items()}


def hyper_step(segmenter: nn.Module, synthetic_image: torch.Tensor, synthetic_mask: torch.Tensor,
               real_image: torch.Tensor, real_mask: torch.Tensor, loss_fn: LossFn, *, lr: float, steps: int = 1,
               order: Order = "first", epsilon: float = 0.01) -> HyperStep:
    """The hypergradient of S's held-out real loss after ``steps`` SGD steps on the synthetic pairs.

    ``synthetic_image`` carries the generator's graph; ``segmenter``'s own
    parameters are read, never changed, and get no ``.grad``.
    """
    if steps < 1:
        raise ValueError(f"seg loop: inner steps must be at least 1, got {steps}")
    params = _leaves(dict(segmenter.named_parameters()))
    with torch.no_grad():
        before = float(loss_fn(functional_call(segmenter, params, (real_image,)), real_mask))
    if order == "second":
        stepped, inner = sgd_steps(segmenter, params, synthetic_image, synthetic_mask, loss_fn, lr, steps, True)
        after = loss_fn(functional_call(segmenter, stepped, (real_image,)), real_mask)
        return HyperStep(after, inner.item(), before, after.item())
    if order == "first":
        return _finite_difference(segmenter, params, synthetic_image, synthetic_mask, real_image, real_mask,
                                  loss_fn, lr, steps, epsilon, before)
    raise ValueError(f"seg loop: order must be 'first' or 'second', got {order!r}")


def _finite_difference(segmenter: nn.Module, params: Params, synthetic_image: torch.Tensor,
                       synthetic_mask: torch.Tensor, real_image: torch.Tensor, real_mask: torch.Tensor,
                       loss_fn: LossFn, lr: float, steps: int, epsilon: float, before: float) -> HyperStep:
    """DARTS' finite-difference hypergradient through the last inner step, as a surrogate on the image."""
    image = synthetic_image.detach()
    start, inner = sgd_steps(segmenter, params, image, synthetic_mask, loss_fn, lr, steps - 1, False)
    start = _leaves(start)
    last, inner_last = sgd_steps(segmenter, start, image, synthetic_mask, loss_fn, lr, 1, False)
    inner = inner_last if inner is None else inner
    stepped = _leaves(last)
    after = loss_fn(functional_call(segmenter, stepped, (real_image,)), real_mask)
    v = torch.autograd.grad(after, list(stepped.values()))
    scale = epsilon / torch.linalg.vector_norm(torch.stack([g.norm() for g in v])).clamp_min(1e-12)

    def image_grad(sign: float) -> torch.Tensor:
        """d L_in / d image at theta + sign * scale * v."""
        shifted = {name: p.detach() + sign * scale * g for (name, p), g in zip(start.items(), v, strict=True)}
        x = image.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(functional_call(segmenter, shifted, (x,)), synthetic_mask), x)
        return grad

    upstream = -lr * (image_grad(1.0) - image_grad(-1.0)) / (2 * scale)
    return HyperStep((synthetic_image * upstream).sum(), inner.item(), before, after.item())


@dataclass
class LoopStep:
    """What :meth:`SegLoop.step` gives back: the hypergradient step and the synthetic pairs (detached) it used."""

    hyper: HyperStep
    synthetic: Batch


class SegLoop:
    """The loop's segmenter, its optimizer, its random stream and its real training pools.

    The segmenter is a GroupNorm U-Net (no running statistics, so the inner
    and outer forward passes change no buffer); it is the ``module``
    attribute, so ``Generator.modules()`` lists it for device layout and the
    multi-process weight broadcast (and keeps it in eval mode, which changes
    nothing for a network without dropout or batch norm). ``state_dict``
    carries the network, the optimizer and the random stream, so a resumed run
    continues bit for bit.

    Args:
        spec: the data spec (image channels and side).
        device: where S and the pools live.
        loss_fn: the segmentation loss of every S step (inner, outer, ordinary training).
        base_channels / depth: S's width and depth (a small U-Net: the loop runs every few G steps).
        lr: Adam learning rate of S's ordinary training.
        inner_lr / inner_steps / order: the differentiable SGD step(s) (see :func:`hyper_step`).
        holdout_every: every ``holdout_every``-th slice of each training patient is held out for the outer loss.
    """

    def __init__(self, spec: DataSpec, device: torch.device | str, *, loss_fn: LossFn, base_channels: int = 8,
                 depth: int = 3, lr: float = 1e-3, inner_lr: float = 0.05, inner_steps: int = 1,
                 order: Order = "first", holdout_every: int = 4) -> None:
        self.device = torch.device(device)
        self.loss_fn = loss_fn
        self.inner_lr, self.inner_steps, self.order = inner_lr, inner_steps, order
        self.holdout_every = holdout_every
        self.module = UNet(spec.channels, 1, base_channels, depth, norm="group").to(self.device)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=lr)
        self.noise = RandomSource(device=self.device)
        self.masks: MaskSource | None = None
        self.pools: dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray]] = {}
        #: Patient ids of every real slice the loop drew (for the check that no validation or test patient enters).
        self.drawn_patients: set[str] = set()

    def attach(self, train: SliceSet, make_masks: Callable[[SliceSet], MaskSource]) -> None:
        """Take the real training slices: split them into the fit and held-out pools, masks from the fit pool.

        ``make_masks`` builds the mask source of the inner step over the fit
        slices (``toolkit.data.masks.DeformedMasks``: deformed real masks).
        """
        fit, held = holdout_split(train, self.holdout_every)
        for name, part in (("fit", fit), ("held", held)):
            image = torch.from_numpy(np.ascontiguousarray(part.images))[:, None].float().to(self.device)
            mask = torch.from_numpy(np.ascontiguousarray(part.masks))[:, None].float().to(self.device)
            self.pools[name] = (image, mask, np.asarray(part.patient).astype(str))
        self.masks = make_masks(fit)

    def pool_patients(self) -> set[str]:
        """Patient ids of every slice the loop can ever draw from (fit and held-out pools)."""
        return {str(p) for _, _, patients in self.pools.values() for p in patients}

    def draw_real(self, pool: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` real (image, mask) pairs of a pool ("fit" or "held"), drawn with replacement."""
        if not self.pools:
            raise RuntimeError("seg loop: attach() the training slices before stepping")
        image, mask, patients = self.pools[pool]
        rows = self.noise.randint(0, len(image), (n,))
        self.drawn_patients.update(patients[rows.numpy()].tolist())
        rows = rows.to(self.device)
        return image[rows], mask[rows]

    def step(self, render: Render, n: int) -> LoopStep:
        """Render ``n`` deformed real masks, step S on them, score it on ``n`` held-out real pairs."""
        masks, cond = self.masks.draw(n, self.noise.generator)
        masks, cond = masks.to(self.device), cond.to(self.device)
        images = render(masks, cond, self.noise.generator)
        real_image, real_mask = self.draw_real("held", n)
        hyper = hyper_step(self.module, images, masks, real_image, real_mask, self.loss_fn, lr=self.inner_lr,
                           steps=self.inner_steps, order=self.order)
        return LoopStep(hyper, Batch(images.detach(), masks, cond))

    def train_segmenter(self, synthetic: Batch) -> float:
        """One ordinary Adam step of S on as many real fit pairs as synthetic ones; returns its loss.

        Call it after the generator's backward: the second-order surrogate reads S's current weights.
        """
        real_image, real_mask = self.draw_real("fit", len(synthetic))
        image = torch.cat([real_image, synthetic.image.to(real_image.dtype)])
        loss = self.loss_fn(self.module(image), torch.cat([real_mask, synthetic.mask]))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "noise": self.noise.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.noise.load_state_dict(state["noise"])
