"""Patient splits, the slice cache and the cached embedded phantom."""

from __future__ import annotations

import time

import numpy as np
import pytest

from toolkit.data import DataError, cache_dir, load_dataset, split_patients
from toolkit.data import loading as loading_mod
from toolkit.data.phantom import write_phantom
from toolkit.data.splits import drawn_subset
from toolkit.schema import ConfigError
from toolkit.settings import DataSettings, SplitSettings

PATIENTS = [f"case{i:02d}" for i in range(20)]
SPLIT = {"seed": 0, "val_patients": 3, "test_patients": 5, "n_train_patients": None}
CFG = {"path": None, "layout": "auto", "image_size": 32, "crop_fraction": 1.0, "percentiles": [0.5, 99.5],
       "msd_channel": 0, "image_name": None, "mask_name": None, "empty_mask": "error", "cache": True,
       "phantom_patients": 2, "phantom_seed": 0}


def test_split_is_disjoint_complete_and_seeded():
    s = split_patients(PATIENTS, SplitSettings(**SPLIT))
    sets = [set(s[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set.union(*sets) == set(PATIENTS)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (12, 3, 5)
    assert split_patients(list(reversed(PATIENTS)), SplitSettings(**SPLIT)) == s  # input order does not matter
    assert split_patients(PATIENTS, SplitSettings(**dict(SPLIT, seed=1))) != s


def test_low_data_training_sets_are_nested_and_keep_val_test():
    full = split_patients(PATIENTS, SplitSettings(**SPLIT))
    prev: set[str] = set()
    for n in (1, 2, 4, 8, 12):
        s = split_patients(PATIENTS, SplitSettings(**dict(SPLIT, n_train_patients=n)))
        assert len(s["train"]) == n and s["val"] == full["val"] and s["test"] == full["test"]
        assert prev <= set(s["train"])
        prev = set(s["train"])


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("GANSEG_CACHE")
    assert cache_dir().name == "ganseg"


def test_cache_hit_skips_preprocessing_and_misses_on_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path / "cache"))
    data = write_phantom(tmp_path / "data", n_patients=2, seed=1)
    cfg = dict(CFG, path=str(data))
    t0 = time.perf_counter()
    cold, fp = load_dataset(DataSettings(**cfg))
    t_cold = time.perf_counter() - t0

    def boom(*args, **kwargs):
        raise AssertionError("preprocessed again despite a cache hit")

    monkeypatch.setattr(loading_mod, "preprocess_case", boom)
    t0 = time.perf_counter()
    warm, fp2 = load_dataset(DataSettings(**cfg))
    t_warm = time.perf_counter() - t0
    assert fp2 == fp and t_warm < t_cold
    np.testing.assert_array_equal(warm.images, cold.images)
    np.testing.assert_array_equal(warm.masks, cold.masks)
    assert list(warm.patient) == list(cold.patient)
    # A changed setting or a touched file misses the cache.
    with pytest.raises(AssertionError, match="preprocessed again"):
        load_dataset(DataSettings(**dict(cfg, image_size=64)))
    img = next((data / "imagesTr").glob("*.nii.gz"))
    img.write_bytes(img.read_bytes())
    with pytest.raises(AssertionError, match="preprocessed again"):
        load_dataset(DataSettings(**cfg))


def test_fingerprint_follows_content_not_location(tmp_path, monkeypatch):
    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path / "cache"))
    a = write_phantom(tmp_path / "a", n_patients=1, seed=2)
    b = write_phantom(tmp_path / "b", n_patients=1, seed=2)
    c = write_phantom(tmp_path / "c", n_patients=1, seed=3)
    fa = load_dataset(DataSettings(**dict(CFG, path=str(a), cache=False)))[1]
    assert load_dataset(DataSettings(**dict(CFG, path=str(b), cache=False)))[1] == fa
    assert load_dataset(DataSettings(**dict(CFG, path=str(c), cache=False)))[1] != fa
    assert load_dataset(DataSettings(**dict(CFG, path=str(a), cache=False, image_size=64)))[1] != fa


def test_embedded_phantom_is_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path / "cache"))
    ss, fp = load_dataset(DataSettings(**dict(CFG, cache=False)))
    folders = list((tmp_path / "cache").glob("phantom-*"))
    assert len(folders) == 1 and (folders[0] / "dataset.json").is_file()
    assert ss.patients() == ["prostate_00", "prostate_01"]
    calls = []
    monkeypatch.setattr("toolkit.data.phantom.write_phantom", lambda *a, **k: calls.append(a))
    ss2, fp2 = load_dataset(DataSettings(**dict(CFG, cache=False)))
    assert calls == [] and fp2 == fp
    np.testing.assert_array_equal(ss2.images, ss.images)


def test_rest_of_the_patients_test_and_val_test_stay_fixed_across_regimes():
    patients = [f"p{i:02d}" for i in range(20)]
    splits = {n: split_patients(patients, SplitSettings(val_patients=3, test_patients="rest", train_pool=8,
                                                        n_train_patients=n)) for n in (2, 4, 8)}
    for n, s in splits.items():
        assert len(s["train"]) == n and len(s["val"]) == 3 and len(s["test"]) == 20 - 3 - 8
        assert len(s["unused"]) == 8 - n and not set(s["unused"]) & (set(s["train"]) | set(s["test"]))
        assert s["val"] == splits[8]["val"] and s["test"] == splits[8]["test"]
        assert set(s["train"]) <= set(splits[8]["train"])
    with pytest.raises(DataError, match=r"at least 12 patients.*train_pool=8"):
        split_patients(patients[:11], SplitSettings(val_patients=3, test_patients="rest", train_pool=8))
    with pytest.raises(ConfigError, match="test_patients: rest needs split.train_pool"):
        SplitSettings(test_patients="rest")
    with pytest.raises(ConfigError, match="larger than split.train_pool"):
        SplitSettings(train_pool=4, n_train_patients=6)


def test_draws_choose_other_training_subsets_of_the_same_pool():
    patients = [f"p{i:02d}" for i in range(20)]
    base = dict(val_patients=3, test_patients="rest", train_pool=8, n_train_patients=3)
    draws = [split_patients(patients, SplitSettings(**base, draw=d)) for d in range(4)]
    pool = set(draws[0]["train"]) | set(draws[0]["unused"])
    assert len({tuple(d["train"]) for d in draws}) == 4  # every draw its own set
    for d in draws:
        assert d["val"] == draws[0]["val"] and d["test"] == draws[0]["test"]
        assert len(d["train"]) == 3 and set(d["train"]) | set(d["unused"]) == pool
    assert split_patients(patients, SplitSettings(**base, draw=2)) == draws[2]  # seeded


def test_draws_never_repeat_a_training_set_and_stop_at_the_last_distinct_one():
    # 4 of a pool of 5: 5 possible sets. Independent seeded draws repeated one (the real-scan
    # benchmark's draws 0 and 2 trained on the same 4 patients); now all 5 differ, and a 6th is refused.
    patients = [f"case{i:03d}" for i in range(12)]
    base = dict(val_patients=2, test_patients="rest", train_pool=5, n_train_patients=4)
    sets = [tuple(split_patients(patients, SplitSettings(**base, draw=d))["train"]) for d in range(5)]
    assert len(set(sets)) == 5
    with pytest.raises(DataError, match=r"split.draw=5: a training pool of 5 patients holds only 5 different"):
        split_patients(patients, SplitSettings(**base, draw=5))
    # A draw that did not collide keeps the patients it had before this rule (recorded benchmarks stay valid).
    for seed in range(6):
        for d in range(1, 5):
            first = np.random.default_rng([seed, d]).choice(5, 4, replace=False)
            earlier = [drawn_subset(5, 4, seed, e) for e in range(d)]
            if tuple(sorted(first)) not in earlier:
                assert drawn_subset(5, 4, seed, d) == tuple(sorted(int(i) for i in first))


def test_a_second_draw_of_a_pool_that_all_trains_is_refused():
    # 12 patients, 2 val + 6 test: the 4 left all train, so draw 1 would repeat draw 0's patients.
    patients = [f"case{i:03d}" for i in range(12)]
    base = dict(val_patients=2, test_patients=6, train_pool=None, n_train_patients=4)
    assert len(split_patients(patients, SplitSettings(**base, draw=0))["train"]) == 4
    with pytest.raises(DataError, match=r"split.draw=1: the training pool holds 4 patients and 4 train, so there "
                                        r"is only one training set"):
        split_patients(patients, SplitSettings(**base, draw=1))
