"""The dice_gain evaluator on tiny synthetic 'patients': oracle vs noise, caching, determinism, outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.evaluators.dice_gain import pooled_dice_ci
from tests.conftest import TINY_SEG
from toolkit.data.slices import SliceSet
from toolkit.plugin import EvalContext
from toolkit.registry import EVALUATORS
from toolkit.seg.baseline import BaselineStore
from toolkit.settings import SegSettings

SIZE = 32
# A tiny segmenter (seconds), and one where the U-Net learns the ellipses reliably in seconds.
LEARNS_SEG = SegSettings(steps=60, schedule="constant", batch_size=8, lr=3e-3, base_channels=8, depth=2, val_every=15, precision="fp32",
                         threads=1)


def ellipse_patients(n: int, seed: int, prefix: str = "p", slices: int = 8) -> SliceSet:
    """Noisy ellipses: one 'gland' per patient, size and position varying by patient and slice.

    A dimmer decoy ellipse elsewhere makes thresholding alone insufficient.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    images, masks, patient, index = [], [], [], []
    for p in range(n):
        cy, cx = rng.uniform(11, 21, size=2)
        ry, rx = rng.uniform(4, 7, size=2)
        dy, dx = rng.uniform(5, 27, size=2)
        for z in range(slices):
            scale = np.sin(np.pi * (z + 0.5) / slices) * 1.2 - 0.2  # empty at the ends
            inside = ((yy - cy) / max(ry * scale, 1e-3)) ** 2 + ((xx - cx) / max(rx * scale, 1e-3)) ** 2 <= 1
            inside &= scale > 0.15
            decoy = ((yy - dy) / 3) ** 2 + ((xx - dx) / 4) ** 2 <= 1
            image = -0.5 + 0.25 * rng.standard_normal((SIZE, SIZE)) + 0.5 * decoy + 0.7 * inside
            images.append(np.clip(image, -1, 1).astype(np.float32))
            masks.append(inside.astype(np.uint8))
            patient.append(f"{prefix}{p:02d}")
            index.append(z)
    m = np.stack(masks)
    area = m.reshape(len(m), -1).mean(1)
    cond = np.stack([np.zeros_like(area), area], 1).astype(np.float32)
    return SliceSet(np.stack(images), m, cond, np.array(patient), np.array(index, dtype=np.int64))


def noise_set(n: int, seed: int) -> SliceSet:
    """Noise images with random blob masks that have nothing to do with the images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = rng.uniform(-1, 1, size=(n, SIZE, SIZE)).astype(np.float32)
    masks = np.stack([((yy - rng.uniform(6, 26)) ** 2 + (xx - rng.uniform(6, 26)) ** 2
                       <= rng.uniform(9, 49)) for _ in range(n)]).astype(np.uint8)
    return SliceSet(images, masks, np.zeros((n, 2), np.float32), np.full(n, "synthetic"),
                    np.arange(n, dtype=np.int64))


def as_synthetic(s: SliceSet) -> SliceSet:
    return SliceSet(s.images.copy(), s.masks.copy(), s.cond.copy(), np.full(len(s), "synthetic"),
                    np.arange(len(s), dtype=np.int64))


def make_ctx(tmp_path: Path, synthetic: SliceSet, cache: Path | None = None, writer=None,
             seg: SegSettings = TINY_SEG) -> EvalContext:
    train = ellipse_patients(3, seed=1, prefix="train")
    val = ellipse_patients(2, seed=2, prefix="val")
    device, cache = torch.device("cpu"), cache or tmp_path / "cache"
    return EvalContext(
        train=train,
        val=val,
        test=ellipse_patients(4, seed=3, prefix="test"),
        synthetic=synthetic,
        device=device,
        run_dir=tmp_path / "run",
        cache_dir=cache,
        data_fingerprint="ellipses-v1",
        baselines=BaselineStore(train, val, "ellipses-v1", seg, device, cache),
        seg=seg,
        writer=writer,
    )


def evaluator(**overrides):
    cls = EVALUATORS.get("dice_gain")
    return cls(**{**cls.tiny, **overrides})


class FakeWriter:
    """Records what a SummaryWriter would receive (no tensorboard import needed)."""

    def __init__(self) -> None:
        self.scalars: dict[str, float] = {}
        self.images: dict[str, tuple] = {}

    def add_scalar(self, tag, value, step=None):
        self.scalars[tag] = value

    def add_image(self, tag, image, step=None, dataformats="CHW"):
        self.images[tag] = (np.asarray(image).shape, dataformats)

    def flush(self):
        pass


LEARNS = {"seeds": 2, "tstr": False, "modes": ("replace", "add")}  # replace first: the primary dice_gain


@pytest.fixture(scope="module")
def oracle_and_noise(tmp_path_factory):
    """Evaluate an oracle (real training pairs) and noise (random images and masks) with one cache."""
    import toolkit.seg.baseline as baseline_module

    tmp = tmp_path_factory.mktemp("oracle")
    calls = []
    real_add = baseline_module.BaselineStore.add

    def counting_add(self, seed, result):  # every freshly trained baseline is added to the store
        calls.append(seed)
        return real_add(self, seed, result)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(baseline_module.BaselineStore, "add", counting_add)
        oracle_ctx = make_ctx(tmp / "oracle", as_synthetic(ellipse_patients(3, seed=1, prefix="train")),
                              cache=tmp / "cache", writer=FakeWriter(), seg=LEARNS_SEG)
        oracle = evaluator(**LEARNS).evaluate(oracle_ctx)
        baseline_calls_first = list(calls)
        # A new evaluation (new ctx, nothing in memory) against the same cache folder.
        noise_ctx = make_ctx(tmp / "noise", noise_set(24, seed=5), cache=tmp / "cache", seg=LEARNS_SEG)
        noise = evaluator(**LEARNS).evaluate(noise_ctx)
    return {"oracle": oracle, "noise": noise, "oracle_ctx": oracle_ctx, "noise_ctx": noise_ctx,
            "first_calls": baseline_calls_first, "all_calls": list(calls)}


def test_noise_gives_clearly_negative_gain_and_oracle_does_not(oracle_and_noise):
    oracle, noise = oracle_and_noise["oracle"], oracle_and_noise["noise"]
    assert noise["dice_gain"] < -0.1
    assert noise["dice_gain_ci_high"] < 0
    assert oracle["dice_gain"] > -0.05
    assert oracle["dice_gain"] - noise["dice_gain"] > 0.1
    assert noise["dice_gain_n_worsened"] >= 3
    assert set(EVALUATORS.get("dice_gain").metrics) <= set(oracle)


def test_each_mode_is_its_own_arm_and_add_keeps_the_full_real_batch(oracle_and_noise):
    noise = oracle_and_noise["noise"]
    assert noise["dice_gain_replace"] == noise["dice_gain"]  # the primary mode is the first
    assert noise["images_per_step_replace"] == 8 and noise["images_per_step_add"] == 16  # ratio 1, batch 8
    # Noise replacing half of each batch costs real exposure; added on top of a full real batch it costs less.
    assert noise["dice_gain_add"] > noise["dice_gain_replace"] + 0.05
    assert {"dice_gain_add_ci_low", "dice_gain_add_mde80", "converged_baseline", "converged_add"} <= set(noise)


def test_tstr_off_and_one_baseline_for_both(oracle_and_noise):
    oracle, noise = oracle_and_noise["oracle"], oracle_and_noise["noise"]
    assert np.isnan(oracle["dice_tstr"])  # switched off in these settings
    # The same baseline serves both: its Dice is identical.
    assert oracle["dice_baseline"] == noise["dice_baseline"]


def test_label_fidelity_separates_matching_from_random_masks(oracle_and_noise):
    assert oracle_and_noise["oracle"]["label_fidelity_dice"] > 0.6
    assert oracle_and_noise["noise"]["label_fidelity_dice"] < 0.3


def test_label_fidelity_ci_brackets_the_estimate_and_separates_oracle_from_noise(oracle_and_noise):
    oracle, noise = oracle_and_noise["oracle"], oracle_and_noise["noise"]
    for values in (oracle, noise):
        assert values["label_fidelity_dice_ci_low"] <= values["label_fidelity_dice"] \
            <= values["label_fidelity_dice_ci_high"]
    assert noise["label_fidelity_dice_ci_high"] < oracle["label_fidelity_dice_ci_low"]


def test_pooled_dice_ci_narrows_with_more_slices_and_is_seeded():
    rng = np.random.default_rng(0)
    def slices(n):  # per-slice Dice spread over 0.2-1.0, 100 true pixels each
        dice = rng.uniform(0.2, 1.0, n)
        total = np.full(n, 200)
        return (dice * total / 2).round().astype(int), total
    few, many = slices(20), slices(500)
    low_few, high_few = pooled_dice_ci(*few, samples=500)
    low_many, high_many = pooled_dice_ci(*many, samples=500)
    pooled = 2 * many[0].sum() / many[1].sum()
    assert low_many < pooled < high_many and 0.55 < low_many and high_many < 0.65  # true mean 0.6
    assert high_many - low_many < (high_few - low_few) / 3  # ~1/sqrt(25) of the width
    assert pooled_dice_ci(*few, samples=500) == (low_few, high_few)
    assert pooled_dice_ci(np.zeros(3, int), np.zeros(3, int), samples=100) == (1.0, 1.0)  # nothing anywhere


def test_label_fidelity_reference_is_the_same_unet_on_real_pairs(oracle_and_noise):
    oracle, noise = oracle_and_noise["oracle"], oracle_and_noise["noise"]
    # The oracle's synthetic set is the real training pairs: its fidelity is the training-slice reference.
    assert oracle["label_fidelity_dice"] == pytest.approx(oracle["label_fidelity_real_train_dice"], abs=1e-6)
    for key in ("label_fidelity_real_train_dice", "label_fidelity_real_val_dice"):
        assert 0.5 < oracle[key] <= 1.0 and oracle[key] == noise[key]  # one U-Net, one real set


def test_second_evaluation_trains_no_baseline(oracle_and_noise):
    assert oracle_and_noise["first_calls"] == [0, 1]  # one baseline per seed, trained once
    assert oracle_and_noise["all_calls"] == [0, 1]  # the noise evaluation trained none
    assert oracle_and_noise["oracle"]["baselines_trained"] == 2
    assert oracle_and_noise["noise"]["baselines_trained"] == 0
    assert len(list((oracle_and_noise["oracle_ctx"].cache_dir / "seg_baselines").glob("*.pt"))) == 2


def test_outputs_tables_figure_and_tensorboard(oracle_and_noise):
    ctx = oracle_and_noise["oracle_ctx"]
    out = ctx.run_dir / "dice_gain"
    with open(out / "per_patient.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 4  # arms (baseline, replace, add) x seeds x test patients
    assert {r["arm"] for r in rows} == {"baseline", "replace", "add"}
    with open(out / "gains.csv") as f:
        gains = list(csv.DictReader(f))
    assert [g["patient"] for g in gains] == ["test00", "test01", "test02", "test03"]
    mean_gain = np.mean([float(g["gain"]) for g in gains])
    assert mean_gain == pytest.approx(oracle_and_noise["oracle"]["dice_gain"], abs=1e-5)
    from PIL import Image

    with Image.open(out / "per_patient_dice.png") as png:
        assert png.mode == "RGB" and png.size[0] >= 300
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["moved_most"]) == 3
    writer = ctx.writer
    assert writer.images["dice_gain/per_patient_dice"][1] == "HWC"
    # The seed-0 baseline lives in the context's store (the seg feature space uses it) and has an encoder.
    unet = ctx.baselines.model(0)
    assert ctx.baselines.trained == 2  # both seeds were trained by this evaluation, none again here
    features = unet.encode(torch.zeros(2, 1, SIZE, SIZE))
    assert features.shape[0] == 2 and features.dim() == 4


def test_same_seed_same_results_and_threads_restored(tmp_path):
    synthetic = noise_set(16, seed=9)
    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    first = evaluator().evaluate(make_ctx(tmp_path / "a", synthetic))
    second = evaluator().evaluate(make_ctx(tmp_path / "b", synthetic))
    assert torch.get_num_threads() == before_threads
    assert torch.are_deterministic_algorithms_enabled() == before_det
    assert first["threads"] == 1 and first["baselines_trained"] == 1 == second["baselines_trained"]
    for key in first:
        if key not in ("seconds", "train_seconds"):
            assert first[key] == second[key] or (np.isnan(first[key]) and np.isnan(second[key])), key
    table = "dice_gain/per_patient.csv"
    assert (tmp_path / "a/run" / table).read_text() == (tmp_path / "b/run" / table).read_text()


def test_controls_report_gain_against_each(tmp_path):
    from toolkit.seg.controls import blur

    # A blurred copy of real slices with every slice holding gland: both controls have something to match.
    real = ellipse_patients(3, seed=1, prefix="train")
    gland = real.select(real.has_gland())
    blurred = blur(torch.from_numpy(gland.images)[:, None], 1.5)[:, 0].numpy()
    synthetic = as_synthetic(SliceSet(blurred, gland.masks, gland.cond, gland.patient, gland.slice_index))
    metrics = evaluator(controls=["balanced_real", "blurred_real"]).evaluate(make_ctx(tmp_path, synthetic))
    assert metrics["synthetic_gland_share"] == 1.0
    assert metrics["control_gland_share"] == 1.0
    assert metrics["blurred_real_sigma"] > 0.5
    for control in ("balanced_real", "blurred_real"):
        assert f"dice_gain_vs_{control}" in metrics and f"dice_{control}" in metrics
        assert np.isfinite(metrics[f"dice_gain_vs_{control}_p_wilcoxon"])
    assert metrics["tstr_gap"] == pytest.approx(metrics["dice_tstr"] - metrics["dice_baseline"])


def test_bad_settings_and_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown control.*balanced_real"):
        evaluator(controls=["balance_real"])
    with pytest.raises(ValueError, match="seg.norm"):
        SegSettings(norm="layer")
    small = noise_set(4, seed=0)
    small = SliceSet(small.images[:, :16, :16], small.masks[:, :16, :16], small.cond, small.patient,
                     small.slice_index)
    with pytest.raises(ValueError, match="synthetic slices are"):
        evaluator().evaluate(make_ctx(tmp_path, small))


def test_config_section_validates_against_signature():
    from toolkit.config import ConfigError, validate_section

    cls = EVALUATORS.get("dice_gain")
    validate_section(cls, {"controls": ["balanced_real"], "seeds": 3}, "evaluators.dice_gain")
    with pytest.raises(ConfigError, match="seeds"):
        validate_section(cls, {"seeds": "three"}, "evaluators.dice_gain")
    with pytest.raises(ConfigError, match="seeds.*>= 1.*got 0"):
        validate_section(cls, {"seeds": 0}, "evaluators.dice_gain")
    with pytest.raises(ConfigError, match="has moved to 'seg.steps'"):
        validate_section(cls, {"steps": 300}, "evaluators.dice_gain")


def test_baseline_cache_key_follows_the_exact_training_slices(tmp_path):
    """Same patients and slice count, different slices: a different baseline (slice selection varies)."""
    ctx = make_ctx(tmp_path, ellipse_patients(2, seed=5, prefix="s"))
    shifted_train = ctx.train.select(np.arange(len(ctx.train)))
    shifted_train.slice_index = shifted_train.slice_index + 1
    shifted = make_ctx(tmp_path, ellipse_patients(2, seed=5, prefix="s"))
    shifted.baselines.train = shifted_train
    assert len(shifted_train) == len(ctx.train)
    assert ctx.baselines.key(0, 1) != shifted.baselines.key(0, 1)


def test_fd_alone_on_a_finished_evaluation_matches_the_full_one(tmp_path):
    """The seg feature space needs no dice_gain run before it: the same baseline, the same fd_seg."""
    synthetic = noise_set(16, seed=9)
    settings = {"features": "seg", "bootstrap": 0, "kid_subset_size": 8, "kid_subsets": 5}
    fd = EVALUATORS.get("fd")
    full_ctx = make_ctx(tmp_path / "full", synthetic, cache=tmp_path / "cache")
    evaluator().evaluate(full_ctx)
    full = fd(**settings).evaluate(full_ctx)
    alone = fd(**settings).evaluate(make_ctx(tmp_path / "alone", synthetic, cache=tmp_path / "cache"))
    assert alone["fd_seg"] == full["fd_seg"]
    fresh = fd(**settings).evaluate(make_ctx(tmp_path / "fresh", synthetic, cache=tmp_path / "other-cache"))
    assert fresh["fd_seg"] == pytest.approx(full["fd_seg"])  # retrained from scratch: deterministic


def test_extra_real_positive_control_reports_its_gain_with_a_ci(tmp_path):
    ctx = make_ctx(tmp_path, noise_set(16, seed=9))
    with pytest.raises(ValueError, match="extra_real control needs real patients outside every split"):
        evaluator(controls=["extra_real"]).evaluate(ctx)
    ctx = make_ctx(tmp_path / "with-extra", noise_set(16, seed=9))
    ctx.extra = ellipse_patients(3, seed=4, prefix="extra")
    metrics = evaluator(controls=["extra_real"]).evaluate(ctx)
    assert metrics["extra_real_patients"] == 3
    for key in ("extra_real_gain", "extra_real_gain_ci_low", "extra_real_gain_ci_high", "extra_real_gain_mde80"):
        assert np.isfinite(metrics[key]), key
    assert metrics["extra_real_gain"] == pytest.approx(metrics["dice_extra_real"] - metrics["dice_baseline"])
    assert metrics["dice_gain_mde80"] > 0 and metrics["dice_gain_ci_halfwidth"] >= 0


def test_two_worker_processes_give_the_in_process_results_and_share_its_cache(tmp_path):
    """seg.processes=2 (two spawned 1-thread workers) == one process at 1 thread, metric for metric; the
    baselines get the same cache key (file name), so either path reuses the other's."""
    import dataclasses

    synthetic = noise_set(16, seed=9)
    settings = {"spread": dataclasses.replace(TINY_SEG, threads=None, processes=2),
                "here": dataclasses.replace(TINY_SEG, threads=1, processes=1)}
    results, files, tables = {}, {}, {}
    for name, seg in settings.items():
        ctx = make_ctx(tmp_path / name, synthetic, seg=seg)
        ctx.extra = ellipse_patients(2, seed=4, prefix="extra")
        # blurred_real's transform and the extra pool have to travel to the workers
        results[name] = evaluator(seeds=2, controls=["blurred_real", "extra_real"]).evaluate(ctx)
        files[name] = sorted(p.name for p in (ctx.cache_dir / "seg_baselines").glob("*.pt"))
        tables[name] = (ctx.run_dir / "dice_gain" / "per_patient.csv").read_text()
    spread, here = results["spread"], results["here"]
    assert spread["processes"] == 2 and here["processes"] == 1 and spread["threads"] == here["threads"] == 1
    assert spread["baselines_trained"] == here["baselines_trained"] == 2
    for key in spread:
        if key not in ("seconds", "train_seconds", "processes"):
            assert spread[key] == here[key] or (np.isnan(spread[key]) and np.isnan(here[key])), key
    assert tables["spread"] == tables["here"]
    assert len(files["spread"]) == 2 and files["spread"] == files["here"]
