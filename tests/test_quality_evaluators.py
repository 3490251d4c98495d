"""Quality evaluators and their feature spaces on tiny procedural slices (no real data, CPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_SEG
from toolkit.data.slices import SliceSet
from toolkit.metrics.extractors import (
    FeatureExtractor,
    RandomConvNet,
    build_extractor,
    module_fingerprint,
    random_extractor,
)
from toolkit.metrics.features import real_features
from toolkit.plugin import EvalContext
from toolkit.registry import EVALUATORS
from toolkit.seg.baseline import BaselineStore


def blob_images(n: int, size: int = 32, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Bright ellipses of random centre and radii on a dark background, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        ry, rx = rng.uniform(0.1, 0.3, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img = np.where(inside, 0.6, -0.6) + rng.normal(0, noise, (size, size))
        out[i] = np.clip(img, -1, 1)
    return out


def slice_set(images: np.ndarray, patients_per: int = 8, name: str = "p") -> SliceSet:
    n = len(images)
    return SliceSet(
        images.astype(np.float32),
        (images > 0).astype(np.uint8),
        np.zeros((n, 2), np.float32),
        np.array([f"{name}{i // patients_per}" for i in range(n)]),
        np.arange(n, dtype=np.int64),
    )


def make_ctx(tmp_path: Path, synthetic: np.ndarray, n_real: int = 48, size: int = 32,
             writer=None) -> EvalContext:
    train = slice_set(blob_images(n_real, size, seed=1), name="train")
    val = slice_set(blob_images(n_real // 2, size, seed=2), name="val")
    test = slice_set(blob_images(n_real // 2, size, seed=3), name="test")
    device, cache = torch.device("cpu"), tmp_path / "cache"
    return EvalContext(
        train=train, val=val, test=test, synthetic=slice_set(synthetic, name="synthetic"),
        device=device, run_dir=tmp_path / "run", cache_dir=cache, data_fingerprint="blobs-v1",
        baselines=BaselineStore(train, val, "blobs-v1", TINY_SEG, device, cache), seg=TINY_SEG, seed=0,
        writer=writer,
    )


# Feature spaces ------------------------------------------------------------------------


def test_random_cnn_is_pinned_across_machines():
    """Weights come from NumPy's PCG64 uniform stream: these values must never change for seed 0."""
    net = RandomConvNet(seed=0)
    first = net.convs[0].weight.flatten()[:3].double()
    # (2u - 1) * sqrt(6 / 9) for u = numpy.random.default_rng(0).random(), the first three draws.
    expected = torch.tensor([0.2236575, -0.37593672, -0.7495871], dtype=torch.float64)
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=0)
    assert module_fingerprint(net) == module_fingerprint(RandomConvNet(seed=0))
    assert module_fingerprint(net) != module_fingerprint(RandomConvNet(seed=1))
    images = blob_images(5, 32)
    a, b = random_extractor(0)(images), random_extractor(0)(images)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 480) and a.dtype == np.float64


class StandInUNet(torch.nn.Module):
    """Stands in for the baseline U-Net: an encoder with a bottleneck feature map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 6, 3, stride=4, padding=1)
        self.encode_calls = 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        return torch.relu(self.conv(x))


class StandInStore:
    """Stands in for ctx.baselines: hands out one model and records the seeds asked for."""

    def __init__(self, model) -> None:
        self._model, self.calls = model, []

    def model(self, seed: int = 0):
        self.calls.append(seed)
        return self._model


def test_seg_features_use_the_baseline_encoder_of_the_store(tmp_path):
    ctx = make_ctx(tmp_path, blob_images(20, seed=7))
    unet = StandInUNet()
    ctx.baselines = StandInStore(unet)
    extractor = build_extractor("seg", ctx)
    feats = extractor(blob_images(4))
    assert feats.shape == (4, 6)  # bottleneck channels, global-average-pooled
    assert unet.encode_calls == 1
    result = EVALUATORS.get("fd")(features="seg", bootstrap=0, kid_subset_size=8, kid_subsets=5).evaluate(ctx)
    assert {"fd_seg", "kid_seg", "kid_seg_std", "fd_seg_n_real"} <= set(result)
    assert not any(k.startswith("fid") for k in result)
    assert ctx.baselines.calls == [0]  # the extractor is built once per evaluation (ctx.memo), from seed 0


def test_seg_features_without_an_encoder_say_what_is_missing(tmp_path):
    ctx = make_ctx(tmp_path, blob_images(20, seed=7))
    ctx.baselines = StandInStore(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="encode"):
        build_extractor("seg", ctx)


def test_real_features_are_cached_on_disk(tmp_path):
    ctx = make_ctx(tmp_path, blob_images(20, seed=7))
    calls = []
    base = random_extractor(0)
    counting = FeatureExtractor("random", lambda x: (calls.append(len(x)), base.fn(x))[1], base.fingerprint)
    first = real_features(ctx, "train", counting, max_samples=30)
    assert calls == [30] and len(list((tmp_path / "cache" / "quality").glob("train-random-*.npy"))) == 1
    ctx.memo.clear()  # a later evaluation: only the disk cache remains
    np.testing.assert_array_equal(real_features(ctx, "train", counting, max_samples=30), first)
    assert calls == [30]
    # Another feature network gets its own entry.
    other = FeatureExtractor("random", base.fn, "random-other")
    real_features(ctx, "train", other, max_samples=30)
    assert len(list((tmp_path / "cache" / "quality").glob("train-random-*.npy"))) == 2


# Evaluators ----------------------------------------------------------------------------


def _run(name: str, ctx, **overrides) -> dict[str, float]:
    cls = EVALUATORS.get(name)
    evaluator = cls(**{**cls.tiny, **overrides})
    result = evaluator.evaluate(ctx)
    assert set(evaluator.metrics) <= set(result)
    assert evaluator.primary in result
    assert all(isinstance(v, float) for v in result.values())
    return result


def test_evaluators_rank_copies_above_lookalikes_above_noise(tmp_path):
    """Distribution metrics must order: real copies < same-distribution samples < noise."""
    noise = np.random.default_rng(0).uniform(-1, 1, (48, 32, 32)).astype(np.float32)
    sets = {"copies": blob_images(48, seed=1), "lookalike": blob_images(48, seed=7), "noise": noise}
    fd, cov = {}, {}
    for label, images in sets.items():
        ctx = make_ctx(tmp_path / label, images)
        fd[label] = _run("fd", ctx)
        cov[label] = _run("prdc", ctx)["coverage_random"]
    assert fd["copies"]["fd_random"] == pytest.approx(0, abs=1e-6)
    assert fd["lookalike"]["fd_random"] < fd["noise"]["fd_random"]
    assert fd["lookalike"]["kid_random"] < fd["noise"]["kid_random"]
    assert fd["noise"]["fd_random_ci_low"] <= fd["noise"]["fd_random"] <= fd["noise"]["fd_random_ci_high"]
    assert fd["noise"]["fd_random_n_real"] == 48 and fd["noise"]["kid_random_subset_size"] == 16
    assert cov["copies"] == 1.0 and cov["noise"] == 0.0 and cov["lookalike"] > 0.5
    record = json.loads((tmp_path / "noise" / "run" / "quality" / "fd_random.json").read_text())
    assert record["features"] == "random" and record["fd_random_n_synthetic"] == 48


def test_diversity_flags_a_collapsed_generator(tmp_path):
    collapsed = np.repeat(blob_images(1, seed=3), 30, axis=0)
    result = _run("diversity", make_ctx(tmp_path / "a", collapsed))
    assert result["msssim_synthetic"] == pytest.approx(1.0, abs=1e-5)
    assert result["msssim_gap"] > 0.5 and result["msssim_abs_gap"] == pytest.approx(result["msssim_gap"])
    honest = _run("diversity", make_ctx(tmp_path / "b", blob_images(30, seed=7)))
    assert honest["msssim_abs_gap"] < result["msssim_abs_gap"]


def test_memorization_flags_copies_and_saves_the_pairs(tmp_path):
    class Writer:
        def __init__(self):
            self.images = {}

        def add_image(self, tag, image, step):
            self.images[tag] = image

    writer = Writer()
    train = blob_images(48, seed=1)
    copies = np.concatenate([train[:20], blob_images(20, seed=9)])  # half copied, half new
    ctx = make_ctx(tmp_path, copies, writer=writer)
    result = _run("memorization", ctx, pairs_shown=3)
    assert result["memorized_fraction_pixel"] >= 0.5
    assert result["memorized_expected"] == 0.05
    png = tmp_path / "run" / "memorization_pairs.png"
    assert png.is_file()
    grid = writer.images["memorization/closest_pairs_pixel"]
    assert grid.shape[0] == 3 and grid.shape[1] == 3 * 32 + 4 * 2  # 3 pair rows, padded
    # The top-left pair is a copy: synthetic and its nearest training slice are the same image.
    torch.testing.assert_close(grid[:, 2:34, 2:34], grid[:, 2:34, 36:68])
    new = _run("memorization", make_ctx(tmp_path / "new", blob_images(40, seed=9)))
    assert new["memorized_fraction_pixel"] < 0.3 and new["nn_dist_ratio_pixel"] > 0.5
    feats = _run("memorization", make_ctx(tmp_path / "f", copies), features="random")
    assert feats["memorized_fraction_random"] >= 0.5


def test_bad_settings_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="evaluators.prdc"):
        EVALUATORS.get("prdc")(k=0)
    with pytest.raises(ValueError, match="percentile"):
        EVALUATORS.get("memorization")(percentile=100)
    ctx = make_ctx(tmp_path, blob_images(10, seed=7))
    with pytest.raises(ValueError, match="unknown features 'clip'"):
        build_extractor("clip", ctx)
    ctx.synthetic = slice_set(blob_images(10, size=16, seed=7))
    with pytest.raises(ValueError, match="must match"):
        _run("diversity", ctx)


def test_memorization_does_not_call_blurry_averages_copies(tmp_path):
    """Blurred mean-like slices are near every training slice, but near validation slices too."""
    from scipy.ndimage import gaussian_filter

    def anatomy(n, seed):  # one shared structure, small per-slice differences, noise
        rng = np.random.default_rng(seed)
        base = blob_images(1, seed=0, noise=0.0)[0]
        return np.clip(base + 0.15 * blob_images(n, seed=seed) + rng.normal(0, 0.2, (n, 32, 32)), -1, 1)

    train, val = anatomy(48, 1).astype(np.float32), anatomy(24, 2).astype(np.float32)
    blurry = np.stack([gaussian_filter(train[i::8].mean(axis=0), 1) for i in range(8)] * 5).astype(np.float32)
    ctx = make_ctx(tmp_path, blurry)
    ctx.train, ctx.val = slice_set(train, name="train"), slice_set(val, name="val")
    result = _run("memorization", ctx)
    assert result["near_train_fraction_pixel"] > 0.5  # the absolute test alone would flag them
    assert result["memorized_fraction_pixel"] <= 0.1
    copied = dataclasses.replace(ctx, synthetic=slice_set(train[:40], name="synthetic"), run_dir=tmp_path / "c")
    copies = _run("memorization", copied)
    assert copies["memorized_fraction_pixel"] >= 0.9


def test_several_feature_spaces_in_one_evaluation_equal_each_alone(tmp_path):
    """features: [a, b] holds both spaces' metrics, each the value its space gives alone (so re-scoring a run in
    a new space keeps the old one), with the first space's primary; a repeated or empty list is refused by name."""
    ctx = make_ctx(tmp_path, blob_images(24, seed=7))
    for name in ("fd", "prdc"):
        cls = EVALUATORS.get(name)
        alone = {space: _run(name, ctx, features=space) for space in ("random", "seg")}
        evaluator = cls(**{**cls.tiny, "features": ["seg", "random"]})
        both = evaluator.evaluate(ctx)
        assert both == {**alone["seg"], **alone["random"]}
        assert set(evaluator.metrics) == set(both) and evaluator.primary.endswith("_seg")
        for bad in (["random", "random"], []):
            with pytest.raises(ValueError, match=rf"evaluators\.{name}\.features: one feature space or a list"):
                cls(**{**cls.tiny, "features": bad})
