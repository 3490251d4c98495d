"""The radiomic feature space and the Fréchet Radiomic Distance (pyradiomics, the [frd] extra), on tiny slices."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.test_quality_evaluators import blob_images, make_ctx
from toolkit.metrics.frechet import frechet_distance_features
from toolkit.metrics.radiomics import frd_from_fd, frd_normalise, import_radiomics
from toolkit.plugin import Memo
from toolkit.registry import EVALUATORS


def needs_pyradiomics() -> None:
    pytest.importorskip("radiomics", reason='the [frd] extra (pyradiomics) is not installed')


def blobs_with_masks(n: int, seed: int, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    images = blob_images(n, 32, seed=seed, noise=noise)
    clean = blob_images(n, 32, seed=seed, noise=0.0)
    return images, (clean > 0).astype(np.uint8)


def test_missing_pyradiomics_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "radiomics", None)  # import radiomics -> ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[frd\]"'):
        import_radiomics()
    from toolkit.metrics.extractors import build_extractor

    class Ctx:
        memo = Memo()
        device = "cpu"

    with pytest.raises(ImportError, match="pyradiomics"):
        build_extractor("radiomic", Ctx())


def test_normalise_drops_nan_rows_and_constant_columns():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(10, 3))
    real[:, 2] = 5.0  # constant over the reference: inf after z-scoring, dropped
    real[3, 0] = np.nan  # a slice without a gland region: dropped
    fake = rng.normal(size=(7, 3))
    r, f = frd_normalise(real, fake)
    assert r.shape == (9, 2) and f.shape == (7, 2)
    np.testing.assert_allclose(r.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(r.std(axis=0), 1, atol=1e-5)
    assert frd_from_fd(0.0) == float("-inf") and frd_from_fd(np.e) == pytest.approx(1.0)


def test_frd_is_zero_against_itself_and_grows_with_noise():
    needs_pyradiomics()
    from toolkit.metrics.radiomics import radiomic_features

    images, masks = blobs_with_masks(12, seed=0)
    base, names = radiomic_features(images, masks)
    assert base.shape[0] == 12 and len(names) == base.shape[1]
    assert any(n.startswith("image:") for n in names) and any(n.startswith("gland:") for n in names)
    assert frechet_distance_features(*frd_normalise(base, base)) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(1)
    fds = []
    for sigma in (0.05, 0.2, 0.5):
        noisy = np.clip(images + rng.normal(0, sigma, images.shape), -1, 1).astype(np.float32)
        fds.append(frechet_distance_features(*frd_normalise(base, radiomic_features(noisy, masks)[0])))
    assert fds[0] < fds[1] < fds[2], fds


def test_bound_extractor_refuses_other_slices():
    needs_pyradiomics()
    from toolkit.metrics.radiomics import RadiomicExtractor

    images, masks = blobs_with_masks(3, seed=0)
    extractor = RadiomicExtractor()
    with pytest.raises(TypeError, match="mask"):
        extractor(images)
    bound = extractor.with_masks(images, masks)
    with pytest.raises(ValueError, match="not the ones"):
        bound(images[::-1].copy())
    assert bound.fingerprint != extractor.with_masks(images, 1 - masks).fingerprint


def test_fd_and_prdc_evaluators_in_the_radiomic_space(tmp_path):
    needs_pyradiomics()
    synthetic = blob_images(16, 32, seed=7, noise=0.3)
    ctx = make_ctx(tmp_path, synthetic, n_real=16)
    fd = EVALUATORS.get("fd")(features="radiomic", max_samples=16, bootstrap=3, kid_subset_size=8, kid_subsets=5)
    result = fd.evaluate(ctx)
    assert set(fd.metrics) <= set(result)
    assert result["fd_radiomic"] > 0 and result["frd_radiomic"] == pytest.approx(np.log(result["fd_radiomic"]))
    scores = EVALUATORS.get("prdc")(features="radiomic", max_samples=16, k=3).evaluate(ctx)
    assert 0 <= scores["coverage_radiomic"] <= 1
    assert list((tmp_path / "cache" / "quality").glob("train-radiomic-*.npy"))  # real features cached


def test_a_gland_of_a_few_pixels_gets_nan_features_not_an_error():
    """Four pixels pass a sum check but resample (spacing 1 -> 2) to one voxel, which pyradiomics refuses:
    such a slice gets NaN gland features (dropped by the normalisation) instead of failing the evaluation."""
    needs_pyradiomics()
    from toolkit.metrics.radiomics import radiomic_features

    images, masks = blobs_with_masks(3, seed=0)
    masks[1] = 0
    masks[1, 10:12, 10:12] = 1
    feats, names = radiomic_features(images, masks)
    gland = np.array([n.startswith("gland:") for n in names])
    assert np.isnan(feats[1, gland]).all() and not np.isnan(feats[1, ~gland]).any()
    assert not np.isnan(feats[[0, 2]]).any()
