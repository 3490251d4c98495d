"""The Inception feature space never downloads: missing or wrong weights fail with where to put them."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import torch

from toolkit.metrics import inception
from toolkit.metrics.extractors import inception_extractor
from toolkit.registry import EVALUATORS


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Any attempt to fetch weights fails the test; the torch hub cache is an empty tmp folder."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to download: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_missing_weights_say_which_file_goes_where(tmp_path):
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    assert inception.default_weights_path() == expected
    with pytest.raises(inception.InceptionWeightsError) as err:
        inception.find_weights()
    message = str(err.value)
    assert str(expected) in message and "never downloads" in message and "inception_weights" in message


def test_missing_configured_path_is_named(tmp_path):
    with pytest.raises(inception.InceptionWeightsError, match="configured inception_weights path"):
        inception.find_weights(tmp_path / "nowhere.pth")


def test_wrong_file_is_rejected_by_hash(tmp_path):
    bogus = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bogus.write_bytes(b"not the weights")
    with pytest.raises(inception.InceptionWeightsError, match="is not the FID Inception weights"):
        inception.find_weights(bogus)


def test_fd_evaluator_with_inception_fails_before_any_download(tmp_path):
    from test_quality_evaluators import blob_images, make_ctx

    ctx = make_ctx(tmp_path, blob_images(8, seed=7), n_real=8)
    with pytest.raises(inception.InceptionWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        EVALUATORS.get("fd")(features="inception").evaluate(ctx)


def _fid_inception_structure() -> torch.nn.Module:
    """pytorch-fid's FID Inception layout with random weights (no file involved)."""
    fid = pytest.importorskip("pytorch_fid.inception")
    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    return net


def test_local_weights_file_is_loaded_offline(tmp_path, monkeypatch):
    """A verified file is loaded into pytorch-fid's network and gives 2048-d features of grey slices."""
    torch.manual_seed(0)
    state = _fid_inception_structure().state_dict()
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    # Stand-in weights cannot have the real hash; accept this file's hash instead.
    monkeypatch.setattr(inception, "SHA256_PREFIX", inception.sha256_of(path)[:8])
    extractor = inception_extractor(str(path))
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32)).astype(np.float32)
    feats = extractor(images)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    assert extractor.fingerprint == "inception-v1-weights.pth"
    # The same weights, fed the same slice as 3 identical channels at 299 x 299, give the same features.
    net = inception.build_fid_inception(path)
    torch.testing.assert_close(net.blocks[0][0].conv.weight, state["Conv2d_1a_3x3.conv.weight"])
    x = torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1)
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        direct = x
        for block in net.blocks:
            direct = block(direct)
    np.testing.assert_allclose(feats, direct.flatten(1).double().numpy(), rtol=1e-5, atol=1e-6)
