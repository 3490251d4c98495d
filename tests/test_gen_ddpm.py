"""Model-specific tests of the ``ddpm`` generator.

The registry-wide contract test covers the default (joint) mode: shapes,
ranges, determinism, state round trip, kill-and-resume. These check what is
particular to diffusion: the schedule, that the few-step DDIM sampler draws
the same distribution as the 1000-step one (with the exact denoiser of a
Gaussian, known in closed form), and the mask-conditioned mode (renders the
given masks, classifier-free guidance changes the images, resumes exactly).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from plugins.generators.ddpm import DDPM
from tests.conftest import make_slices
from toolkit.config import ConfigError, validate_section
from toolkit.data.masks import DeformedMasks
from toolkit.nn.diffusion import cosine_alpha_bar, sampling_timesteps, solve
from toolkit.plugin import TrainContext
from toolkit.registry import GENERATORS
from toolkit.train.sampling import make_sampler
from toolkit.types import DataSpec

SIZE = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(**overrides) -> DDPM:
    torch.manual_seed(0)
    data = make_slices(n_patients=3, slices_per_patient=6, size=SIZE)
    gen = GENERATORS.get("ddpm")(DataSpec(image_size=SIZE), "cpu", **{**DDPM.tiny, **overrides})
    gen.setup(TrainContext(train=data, mask_source=DeformedMasks(data)))
    return gen


def batch(n: int = 8):
    return make_slices(n_patients=3, slices_per_patient=6, size=SIZE).to_batch(np.arange(n))


# Schedule and sampler ---------------------------------------------------------------------


def test_cosine_schedule_runs_from_clean_to_pure_noise() -> None:
    ab = cosine_alpha_bar(1000)
    assert ab.shape == (1000,) and torch.all(ab[1:] < ab[:-1])
    assert ab[0] > 0.999 and ab[-1] < 1e-6
    assert abs(float(ab[499]) - 0.5) < 0.02  # cosine: half the signal variance left half-way
    for spacing in ("time", "logsnr"):
        ts = sampling_timesteps(ab, 20, spacing)
        assert ts[0] == 999 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))
        assert len(ts) == 20
    assert sampling_timesteps(ab, 1000, "time") == list(range(999, -1, -1))
    # log-SNR spacing puts more steps at low noise than uniform spacing in t.
    assert sum(t < 500 for t in sampling_timesteps(ab, 20, "logsnr")) > sum(
        t < 500 for t in sampling_timesteps(ab, 20, "time"))
    with pytest.raises(ValueError, match="sampling steps"):
        sampling_timesteps(ab, 0)


def gaussian_denoiser(mu: float, sigma: float, alpha_bar: torch.Tensor, prediction: str):
    """The exact (MMSE) denoiser of data ~ N(mu, sigma^2), in the ``prediction`` parametrisation.

    With x_t = a x0 + s eps: E[x0 | x_t] = mu + a sigma^2 / (a^2 sigma^2 + s^2) (x_t - a mu).
    """

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = alpha_bar[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = mu + a * sigma**2 / (a**2 * sigma**2 + s**2) * (x - a * mu)
        eps = (x - a * x0) / s
        return a * eps - s * x0 if prediction == "v" else eps

    return denoise


def gaussian_samples(mu: float, sigma: float, prediction: str, steps: int, solver: str, spacing: str,
                     eta: float = 0.0, n: int = 20_000) -> tuple[float, float]:
    ab = cosine_alpha_bar(1000)
    noise = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    x = solve(gaussian_denoiser(mu, sigma, ab, prediction), noise, ab, sampling_timesteps(ab, steps, spacing),
              prediction=prediction, solver=solver, eta=eta, clip=False, generator=torch.Generator().manual_seed(1))
    return float(x.mean()), float(x.std())


@pytest.mark.parametrize("prediction", ["v", "eps"])
@pytest.mark.parametrize("sigma", [0.2, 0.05])
def test_few_step_sampler_matches_1000_steps_on_a_gaussian(prediction: str, sigma: float) -> None:
    """Data ~ N(0.3, sigma^2) per pixel, the exact denoiser: the default 20-step sampler draws it.

    Sampling error of the mean is sigma / sqrt(n) (<= 0.0014), of the std about 0.001.
    """
    mu = 0.3
    reference = {
        "ancestral DDPM, 1000 steps": gaussian_samples(mu, sigma, prediction, 1000, "ddim", "time", eta=1.0),
        "DDIM, 1000 steps": gaussian_samples(mu, sigma, prediction, 1000, "ddim", "time"),
    }
    few = gaussian_samples(mu, sigma, prediction, 20, "dpmpp_2m", "logsnr")  # the generator's default sampler
    for name, (mean, std) in reference.items():
        assert abs(mean - mu) < 0.01 and abs(std - sigma) < 0.03 * sigma + 0.002, (name, mean, std)
        assert abs(few[0] - mean) < 0.01, (name, few, mean)
        assert abs(few[1] - std) < 0.05 * sigma, (name, few, std)


def test_few_step_ddim_is_too_narrow_which_is_why_2m_is_the_default() -> None:
    _, ddim = gaussian_samples(0.3, 0.2, "v", 20, "ddim", "time")
    _, dpm = gaussian_samples(0.3, 0.2, "v", 20, "dpmpp_2m", "logsnr")
    assert ddim < 0.9 * 0.2 and abs(dpm - 0.2) < 0.01


def test_sampler_with_a_wrong_denoiser_misses_the_distribution() -> None:
    """The check above can fail: a denoiser of N(mu, (2 sigma)^2) gives twice the spread."""
    ab = cosine_alpha_bar(1000)
    noise = torch.randn(5000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    x = solve(gaussian_denoiser(0.3, 0.4, ab, "v"), noise, ab, sampling_timesteps(ab, 20), clip=False)
    assert abs(float(x.std()) - 0.2) > 0.1


# The generator ----------------------------------------------------------------------------


def test_joint_losses_decrease_on_tiny_data() -> None:
    gen = build(lr=3e-3, warmup_steps=1)
    b = batch(16)
    losses = [gen.train_step(b, step)["loss"] for step in range(40)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), losses


def test_eps_prediction_trains_and_samples_in_range(monkeypatch) -> None:
    gen = build(prediction="eps")
    gen.train_step(batch(), 0)
    gen.eval()
    clock = iter([10.0, 16.0])  # sample() reads the clock when it starts and when it ends: 6 s for 3 pairs
    monkeypatch.setattr("plugins.generators.ddpm.time", SimpleNamespace(perf_counter=lambda: next(clock)))
    out = gen.sample(3, generator=torch.Generator().manual_seed(0))
    assert out.image.min() >= -1 and out.image.max() <= 1
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    assert gen.last_sampling_seconds_per_100 == pytest.approx(6.0 * 100 / 3)


def test_bad_settings_fail_early() -> None:
    with pytest.raises(ConfigError, match=r"'generator.mode' .*must be one of joint, mask_conditioned"):
        validate_section(DDPM, {"mode": "pix2pix"}, "generator")  # the schema, from the signature
    with pytest.raises(ValueError, match="sampling steps"):
        build(sample_steps=2000)
    with pytest.raises(ValueError, match="eta"):
        build(eta=1.0)  # dpmpp_2m is deterministic
    with pytest.raises(ValueError, match="divisible"):
        build(channel_mults=(1, 2, 2, 2, 2, 2))


def test_mask_conditioned_renders_the_given_masks_and_guidance_matters() -> None:
    gen = build(mode="mask_conditioned", guidance=3.0)
    assert gen.needs_masks is True and DDPM.needs_masks is False  # per instance: the core reads the instance
    b = batch()
    for step in range(3):
        gen.train_step(b, step)
    gen.eval()
    masks, cond = b.mask[2:7], b.cond[2:7]
    out = gen.sample(5, cond=cond, masks=masks, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.mask, masks)
    assert out.image.shape == (5, 1, SIZE, SIZE) and out.image.min() >= -1 and out.image.max() <= 1
    plain = gen.sample(5, cond=cond, masks=masks, generator=torch.Generator().manual_seed(0), guidance=1.0)
    assert not torch.allclose(out.image, plain.image), "guidance scale had no effect"
    # Without masks it draws from the mask source; the core's sampler checks the masks come back.
    drawn = make_sampler(gen, make_slices(n_patients=3, slices_per_patient=6, size=SIZE))(
        4, torch.Generator().manual_seed(1))
    assert drawn.mask.shape == (4, 1, SIZE, SIZE) and set(drawn.mask.unique().tolist()) <= {0.0, 1.0}


def test_mask_conditioned_without_a_mask_source_says_so() -> None:
    gen = GENERATORS.get("ddpm")(DataSpec(image_size=SIZE), "cpu", **{**DDPM.tiny, "mode": "mask_conditioned"})
    with pytest.raises(RuntimeError, match="mask source"):
        gen.sample(2, generator=torch.Generator().manual_seed(0))


def test_mask_conditioned_state_round_trip_is_exact() -> None:
    original = build(mode="mask_conditioned")
    b = batch()
    original.train_step(b, 0)
    restored = build(mode="mask_conditioned", lr=0.5)  # different weights and settings until loaded...
    restored.lr = original.lr  # ...except the config, which comes from the YAML, not the checkpoint
    restored.load_state_dict(copy.deepcopy(original.state_dict()))  # as from a file: no shared tensors
    assert original.train_step(b, 1) == restored.train_step(b, 1)
    original.eval(), restored.eval()
    a = original.sample(3, masks=b.mask[:3], generator=torch.Generator().manual_seed(0))
    c = restored.sample(3, masks=b.mask[:3], generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.image, c.image)


class RecordingWriter:
    def __init__(self) -> None:
        self.images: list[str] = []
        self.scalars: dict[str, float] = {}

    def add_image(self, tag, image, step) -> None:
        assert image.shape[0] == 3
        self.images.append(tag)

    def add_scalar(self, tag, value, step) -> None:
        self.scalars[tag] = value


@pytest.mark.parametrize("mode", ["joint", "mask_conditioned"])
def test_log_visuals_writes_a_grid_per_step_count(mode: str) -> None:
    gen = build(mode=mode, guidance=2.0)
    gen.train_step(batch(), 0)
    gen.eval()
    writer = RecordingWriter()
    gen.last_sampling_seconds_per_100 = 1.5  # as the core's own sampling left it
    with torch.no_grad():
        gen.log_visuals(writer, 1)
    expected = [f"ddpm/samples_{k:03d}_steps" for k in DDPM.tiny["visual_steps"]]
    assert writer.images[: len(expected)] == expected
    assert ("ddpm/samples_no_guidance" in writer.images) == (mode == "mask_conditioned")
    assert set(writer.scalars) == {f"ddpm/sampling_seconds_per_100_{k:03d}_steps" for k in DDPM.tiny["visual_steps"]}
    assert gen.last_sampling_seconds_per_100 == 1.5  # the visuals' timings are not the figure of record
