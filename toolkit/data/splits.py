"""Seeded patient-level splits: no patient's slices ever land in two splits."""

from __future__ import annotations

import numpy as np

from toolkit.data.errors import DataError
from toolkit.settings import SplitSettings


def split_patients(patients: list[str], split_cfg: SplitSettings) -> dict[str, list[str]]:
    """Split patient ids into train / val / test.

    Test patients are drawn first, then validation, from one seeded
    permutation of the sorted ids; the rest is the training pool, of which the
    first ``n_train_patients`` are kept. So val and test do not change when
    ``n_train_patients`` does, and smaller training sets are subsets of larger
    ones (a fair low-data curve).

    Args:
        patients: patient ids (order does not matter; duplicates are an error).
        split_cfg: the ``split`` config section: ``seed``, ``val_patients``,
            ``test_patients``, ``n_train_patients`` (None: all remaining).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        DataError: too few patients for the requested split, or bad counts.
    """
    ids = sorted(str(p) for p in patients)
    if len(set(ids)) != len(ids):
        dup = sorted({p for p in ids if ids.count(p) > 1})
        raise DataError(f"split: patient ids must be unique, found duplicates {dup}")
    n_val, n_test, n_train = split_cfg.val_patients, split_cfg.test_patients, split_cfg.n_train_patients
    pool = len(ids) - n_val - n_test
    need = n_val + n_test + (n_train or 1)
    if pool < (n_train or 1):
        raise DataError(
            f"split needs {need} patients (val_patients={n_val} + test_patients={n_test} + "
            f"{n_train or 'at least 1'} training) but the data has {len(ids)}; lower split.val_patients / "
            f"split.test_patients / split.n_train_patients or add patients"
        )
    order = [ids[i] for i in np.random.default_rng(split_cfg.seed).permutation(len(ids))]
    test, val, rest = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    train = rest if n_train is None else rest[:n_train]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
