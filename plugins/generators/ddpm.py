"""``ddpm``: a denoising diffusion model of (image, mask) pairs, sampled in a few deterministic steps.

Training (Ho et al., NeurIPS 2020, "Denoising Diffusion Probabilistic
Models"): a clean pair ``x0`` is noised to ``x_t = a_t x0 + s_t eps`` at a
random timestep ``t`` of a cosine schedule, ``a_t^2 = alpha_bar(t)``,
``s_t^2 = 1 - a_t^2`` (Nichol & Dhariwal, ICML 2021, "Improved Denoising
Diffusion Probabilistic Models": the cosine schedule destroys information
evenly over ``t`` instead of wasting the last quarter on pure noise, which
matters at 64 x 64), and a U-Net learns to predict

- ``v = a_t eps - s_t x0`` (``prediction="v"``, the default; Salimans & Ho,
  ICLR 2022, "Progressive Distillation for Fast Sampling of Diffusion
  Models"): well scaled at every ``t``, including ``a_t ~ 0`` where an
  epsilon model's implied ``x0`` blows up, so it is the better target when
  sampling takes big steps; or
- ``eps`` (``prediction="eps"``, Ho et al.'s original target),

with a plain mean-squared error. Sampling uses an exponential moving average
of the weights (``toolkit.nn.ema.EMA``).

Sampling: a deterministic ODE solver on ``sample_steps`` timesteps of the
training schedule. The default, DPM-Solver++(2M) (Lu et al., 2022,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models"), steps in the predicted clean pair ``x0_hat`` (clipped to [-1, 1])
in the log signal-to-noise ratio ``lambda = log(a / s)``:

    x_n = (s_n / s_t) x_t - a_n expm1(-h) D,    h = lambda_n - lambda_t,

with ``D = x0_hat`` for DDIM (Song, Meng & Ermon, ICLR 2021, "Denoising
Diffusion Implicit Models", ``eta = 0``: the first-order solver) and a
second-order extrapolation from the previous step's ``x0_hat`` for 2M. With
the exact denoiser of a Gaussian, 20 DDIM steps give 85% of the true spread
(few-step DDIM samples are too smooth), 20 2M steps on log-SNR spacing give
it within 3% (``tests/test_gen_ddpm.py``). The only randomness is the
starting noise, drawn from the ``torch.Generator`` passed to
:meth:`DDPM.sample`; a few dozen steps replace the thousand of ancestral
sampling (``solver="ddim", eta=1`` with ``sample_steps = timesteps``, kept
as the reference). Hand-written on purpose: the ``diffusers`` schedulers
would add a dependency for about fifty lines. The schedule, the solvers and
the timestep embedding are generic and live in ``toolkit.nn.diffusion``.

Two ways to model the pair (``mode``):

- ``joint`` (default): image and mask are two channels of one diffusion
  (the mask mapped to [-1, 1]); the mask channel is thresholded at 0 at the
  end, so every image comes with the mask it was generated with.
- ``mask_conditioned``: only the image is diffused; the mask is an extra
  input channel of the U-Net, and ``sample`` renders images for the masks it
  is given (or draws them from the core's mask source: deformed real masks,
  another run's masks). Classifier-free guidance (Ho & Salimans, 2021,
  "Classifier-Free Diffusion Guidance"): the mask is replaced by a null
  input (zeros; a real mask is +-1 everywhere) with probability
  ``cond_drop`` during training, and sampling mixes the two predictions,
  ``v = v_uncond + guidance * (v_cond - v_uncond)`` (``guidance = 1``: the
  plain conditional model; > 1: images that follow the mask more strictly).

The denoiser is a compact DDPM U-Net: sinusoidal timestep embedding (as the
Transformer's positions, Vaswani et al., 2017) through an MLP, residual
blocks with GroupNorm whose biases the embedding shifts, and multi-head
self-attention at the lowest resolution only (attention on a 64 x 64 map
would cost more than the rest of the network on a CPU).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.nn.diffusion import Denoiser, cosine_alpha_bar, sampling_timesteps, solve, timestep_embedding
from toolkit.nn.ema import EMA, ema_or_net
from toolkit.nn.optim import optimizer_step
from toolkit.nn.pairs import decode_pair, encode_pair
from toolkit.nn.rng import RandomSource
from toolkit.plugin import Generator
from toolkit.registry import GENERATORS
from toolkit.train.visuals import pair_grid
from toolkit.types import Batch, DataSpec

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# Denoiser U-Net ---------------------------------------------------------------------------


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch, so each block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv, + timestep bias, GroupNorm -> SiLU -> dropout -> 3x3 conv, + skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.out_layers = nn.Sequential(_norm(c_out), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(c_out, c_out, 3, padding=1)))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None].to(x.dtype)
        return self.skip(x) + self.out_layers(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a (small) feature map, residual."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"ddpm: attention channels {channels} not divisible by {heads} heads")
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # [n, heads, hw, c/heads]
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class DenoiserUNet(nn.Module):
    """DDPM U-Net: ``(x_t, t) -> prediction`` with ``out_channels`` channels.

    Args:
        in_channels: channels of x_t plus any conditioning channels.
        out_channels: channels of the prediction.
        image_size: input side; divisible by ``2 ** (len(channel_mults) - 1)``.
        base_channels: channels at full resolution.
        channel_mults: channel multiplier per resolution, from full size down; each
            further entry halves the resolution.
        res_blocks: residual blocks per resolution on the way down (one more on the way up).
        attention_heads: heads of the self-attention at the lowest resolution (and in the middle).
        dropout: dropout inside residual blocks.
    """

    def __init__(self, in_channels: int, out_channels: int, image_size: int, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 2, 2), res_blocks: int = 1, attention_heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        levels = len(channel_mults)
        if levels < 1 or image_size % 2 ** (levels - 1):
            raise ValueError(f"ddpm: image_size {image_size} is not divisible by 2**{levels - 1} "
                             f"(channel_mults {tuple(channel_mults)})")
        self.base_channels = base_channels
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        chans = [base_channels * m for m in channel_mults]
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        # Down path: res blocks per level (attention at the lowest), then a strided conv.
        self.down = nn.ModuleList()
        skips = [base_channels]
        c = base_channels
        for level, c_out in enumerate(chans):
            for _ in range(res_blocks):
                blocks = [ResBlock(c, c_out, emb_dim, dropout)]
                if level == levels - 1:
                    blocks.append(SelfAttention(c_out, attention_heads))
                self.down.append(nn.ModuleList(blocks))
                c = c_out
                skips.append(c)
            if level < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
        self.middle = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), SelfAttention(c, attention_heads),
                                     ResBlock(c, c, emb_dim, dropout)])
        # Up path: res_blocks + 1 blocks per level, each eating one skip, then upsampling.
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            c_out = chans[level]
            for i in range(res_blocks + 1):
                blocks = [ResBlock(c + skips.pop(), c_out, emb_dim, dropout)]
                if level == levels - 1:
                    blocks.append(SelfAttention(c_out, attention_heads))
                c = c_out
                if level > 0 and i == res_blocks:
                    blocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                nn.Conv2d(c, c, 3, padding=1)))
                self.up.append(nn.ModuleList(blocks))
        self.head = nn.Sequential(_norm(c), nn.SiLU(), _zero(nn.Conv2d(c, out_channels, 3, padding=1)))

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            h = block(h, emb) if isinstance(block, (ResBlock, SelfAttention)) else block(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        h = self.stem(x)
        skips = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            skips.append(h)
        h = self._run(self.middle, h, emb)
        for blocks in self.up:
            h = self._run(blocks, torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)


# The generator ----------------------------------------------------------------------------


@GENERATORS.register("ddpm")
class DDPM(Generator):
    """Diffusion model of (image, mask) pairs (joint) or of images given masks, sampled in few steps."""

    tiny: ClassVar[dict[str, Any]] = {
        "base_channels": 8, "channel_mults": (1, 2), "attention_heads": 2, "sample_steps": 4,
        "visual_steps": (2, 4), "visual_pairs": 4,
    }

    def __init__(
        self,
        spec: DataSpec,
        device: torch.device | str = "cpu",
        *,
        mode: Literal["joint", "mask_conditioned"] = "joint",  # joint: image + mask diffused together; mask_conditioned: image given a mask
        prediction: Literal["v", "eps"] = "v",  # network target: v (well scaled at every t, best for few steps) or eps
        timesteps: int = 1000,  # training timesteps T of the cosine schedule
        base_channels: int = 32,  # U-Net channels at full resolution
        channel_mults: tuple[int, ...] = (1, 2, 2, 2),  # channel multiplier per resolution (each further entry halves it)
        res_blocks: int = 1,  # residual blocks per resolution (down; up has one more)
        attention_heads: int = 4,  # heads of the self-attention at the lowest resolution
        dropout: float = 0.0,  # dropout in residual blocks (0.1 helps on long runs on few patients)
        lr: float = 1e-3,  # Adam(W) learning rate (high for short CPU runs; ~2e-4 for long ones)
        weight_decay: float = 0.0,  # AdamW weight decay
        warmup_steps: int = 50,  # linear learning-rate warm-up
        grad_clip: float = 1.0,  # max global gradient norm; 0 disables
        mask_weight: float = 1.0,  # joint mode: loss weight of the mask channel relative to the image
        ema_decay: float = 0.999,  # EMA of the weights for sampling (with the EMA's warm-up); 0 disables
        sample_steps: int = 25,  # network evaluations per sample (a few dozen; 1..timesteps)
        solver: Literal["dpmpp_2m", "ddim"] = "dpmpp_2m",  # sampler: DPM-Solver++(2M) or DDIM (first order)
        spacing: Literal["logsnr", "time"] = "logsnr",  # sampling timesteps evenly spaced in log-SNR or in t
        eta: float = 0.0,  # ddim only: 0 deterministic; 1 with sample_steps = timesteps is ancestral DDPM
        clip_x0: bool = True,  # clip the predicted x0 to [-1, 1] at every sampling step
        cond_drop: float = 0.15,  # mask_conditioned: probability of training without the mask (for guidance)
        guidance: float = 1.5,  # mask_conditioned: classifier-free guidance scale (1: none; >1: stricter to the mask)
        visual_steps: tuple[int, ...] = (5, 20, 50),  # TensorBoard: sample grids at these sampling step counts
        visual_pairs: int = 16,  # TensorBoard: pairs per grid
        sample_chunk: int = 128,  # pairs denoised at once when sampling
    ) -> None:
        super().__init__(spec, device)
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"ddpm: cond_drop must be in [0, 1), got {cond_drop}")
        if eta != 0 and solver != "ddim":
            raise ValueError(f"ddpm: eta={eta} needs solver=ddim (dpmpp_2m is deterministic)")
        self.alpha_bar = cosine_alpha_bar(timesteps)  # float64, CPU: a constant of the config, not state
        for k in (sample_steps, *visual_steps):
            sampling_timesteps(self.alpha_bar, k, spacing)  # fails early on a bad step count or spacing
        self.mode = mode
        # needs_masks is a class attribute of the contract, but the mode is per instance:
        # the core reads gen.needs_masks on the instance, so set it here.
        self.needs_masks = mode == "mask_conditioned"
        self.prediction = prediction
        self.timesteps = timesteps
        self.lr = lr
        self.warmup_steps = warmup_steps
        self.grad_clip = grad_clip
        self.mask_weight = mask_weight
        self.sample_steps = sample_steps
        self.solver = solver
        self.spacing = spacing
        self.eta = eta
        self.clip_x0 = clip_x0
        self.cond_drop = cond_drop
        self.guidance = guidance
        self.visual_steps = tuple(visual_steps)
        self.visual_pairs = visual_pairs
        self.sample_chunk = sample_chunk
        # Channels: joint diffuses image + mask; mask_conditioned diffuses the image and reads the mask.
        c = spec.channels
        self.diffused = c + 1 if mode == "joint" else c
        in_channels = self.diffused + (1 if mode == "mask_conditioned" else 0)
        self.net = DenoiserUNet(in_channels, self.diffused, spec.image_size, base_channels, tuple(channel_mults),
                                res_blocks, attention_heads, dropout).to(self.device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.ema = EMA(self.net, ema_decay) if ema_decay > 0 else None
        # Own random source (timesteps, noise, condition dropout): a resumed run is bit-for-bit the same.
        self.noise = RandomSource(device=self.device)
        # Wall seconds per 100 pairs of the latest sample() call (set there; see docs/generators_ddpm.md).
        self.last_sampling_seconds_per_100: float | None = None

    # Training -------------------------------------------------------------------------------

    def _x0(self, batch: Batch) -> torch.Tensor:
        """What is diffused: image (+ mask mapped to [-1, 1] in joint mode)."""
        if self.mode == "joint":
            return encode_pair(batch.image, batch.mask)
        return batch.image

    def _net_input(self, x: torch.Tensor, cond_mask: torch.Tensor | None) -> torch.Tensor:
        """The U-Net input: x_t, plus in mask_conditioned mode the mask in [-1, 1] (0 = no mask)."""
        if self.mode == "joint":
            return x
        if cond_mask is None:
            cond_mask = torch.zeros_like(x[:, :1])
        return torch.cat([x, cond_mask.to(x.dtype)], dim=1)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        x0 = self._x0(batch)
        n = len(x0)
        # Draw timestep, noise and condition dropout from the generator's own source.
        t = self.noise.randint(0, self.timesteps, (n,))
        eps = self.noise.randn(*x0.shape)
        drop = self.noise.rand(n, 1, 1, 1) < self.cond_drop
        ab = self.alpha_bar[t].float().to(self.device).view(n, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x_t = a * x0 + s * eps
        target = a * eps - s * x0 if self.prediction == "v" else eps
        cond = None
        if self.mode == "mask_conditioned":
            cond = torch.where(drop, torch.zeros_like(batch.mask), batch.mask * 2.0 - 1.0)
        with self.autocast():
            out = self.net(self._net_input(x_t, cond), t.to(self.device))
        err = (out.float() - target).pow(2)
        # Per-channel MSE; joint mode weights the mask channel by mask_weight.
        l_image = err[:, : self.spec.channels].mean()
        loss = l_image
        stats: dict[str, float] = {}
        if self.mode == "joint":
            l_mask = err[:, self.spec.channels:].mean()
            k = self.spec.channels
            loss = (k * l_image + self.mask_weight * l_mask) / (k + self.mask_weight)
            stats["mask"] = l_mask.item()
        # Update: warm-up, clipping, EMA.
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * min(1.0, (step + 1) / max(1, self.warmup_steps))
        grad_norm = optimizer_step(self.optimizer, loss, ema=self.ema, net=self.net, grad_clip=self.grad_clip)
        if grad_norm is not None:
            stats["grad_norm"] = grad_norm
        stats.update(loss=loss.item(), image=l_image.item())
        return stats

    # Sampling -------------------------------------------------------------------------------

    def _denoiser(self, net: nn.Module, cond_mask: torch.Tensor | None, guidance: float) -> Denoiser:
        """``(x_t, t) -> prediction`` for the sampler, with classifier-free guidance if conditioned."""

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                if cond_mask is None:
                    return net(self._net_input(x, None), t).float()
                if guidance == 1.0:
                    return net(self._net_input(x, cond_mask), t).float()
                # One batched pass: conditional and unconditional halves.
                both = net(torch.cat([self._net_input(x, cond_mask), self._net_input(x, None)]),
                           torch.cat([t, t])).float()
                cond, uncond = both.chunk(2)
                return uncond + guidance * (cond - uncond)

        return denoise

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> Batch:
        """Draw ``n`` pairs in ``steps`` solver steps (default ``sample_steps``); noise from ``generator``.

        In ``mask_conditioned`` mode the images are rendered for ``masks`` (drawn from the
        mask source when None) and those masks are returned unchanged.
        """
        steps = self.sample_steps if steps is None else steps
        guidance = self.guidance if guidance is None else guidance
        net = ema_or_net(self.ema, self.net)
        start = time.perf_counter()
        if self.mode == "mask_conditioned" and masks is None:
            if self.mask_source is None:
                raise RuntimeError("ddpm (mask_conditioned) has no masks to render: pass masks= or call "
                                   "setup() with a mask source (the core does, from the `masks` config section)")
            masks, cond = self.mask_source.draw(n, generator)
        timesteps = sampling_timesteps(self.alpha_bar, steps, self.spacing)
        # All starting noise first, on the CPU, from the caller's generator.
        size = self.spec.image_size
        noise = torch.randn(n, self.diffused, size, size, generator=generator)
        images, out_masks = [], []
        for rows in torch.arange(n).split(self.sample_chunk):
            cond_mask = None
            if self.mode == "mask_conditioned":
                cond_mask = (masks[rows].float() * 2.0 - 1.0).to(self.device)
            x = solve(self._denoiser(net, cond_mask, guidance), noise[rows].to(self.device), self.alpha_bar,
                      timesteps, prediction=self.prediction, solver=self.solver, eta=self.eta, clip=self.clip_x0,
                      generator=generator)
            x = x.float().cpu()
            image, mask = decode_pair(x[:, : self.spec.channels], x[:, self.spec.channels:])  # no mask channel if given
            images.append(image)
            if self.mode == "joint":
                out_masks.append(mask)
        image = torch.cat(images)
        mask = torch.cat(out_masks) if self.mode == "joint" else masks.cpu().float()
        self.last_sampling_seconds_per_100 = (time.perf_counter() - start) * 100.0 / max(1, n)
        out_cond = cond.cpu() if (cond is not None and self.mode == "mask_conditioned") else None
        return Batch(image, mask, out_cond)

    def log_visuals(self, writer: SummaryWriter, step: int) -> None:
        """Sample grids from the same starting noise (and masks) at several DDIM step counts."""
        g = torch.Generator().manual_seed(1234)
        masks = None
        if self.mode == "mask_conditioned" and self.mask_source is not None:
            masks, _ = self.mask_source.draw(self.visual_pairs, g)
        last = self.last_sampling_seconds_per_100
        for k in self.visual_steps:
            out = self.sample(self.visual_pairs, masks=masks, generator=torch.Generator().manual_seed(0), steps=k)
            writer.add_image(f"ddpm/samples_{k:03d}_steps", pair_grid(out.image, out.mask), step)
            writer.add_scalar(f"ddpm/sampling_seconds_per_100_{k:03d}_steps", self.last_sampling_seconds_per_100, step)
        if self.mode == "mask_conditioned" and masks is not None and self.guidance != 1.0:
            out = self.sample(self.visual_pairs, masks=masks, generator=torch.Generator().manual_seed(0), guidance=1.0)
            writer.add_image("ddpm/samples_no_guidance", pair_grid(out.image, out.mask), step)
        self.last_sampling_seconds_per_100 = last  # the figure of record is the core's own sampling
