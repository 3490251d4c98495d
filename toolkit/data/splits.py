"""Seeded patient-level splits: no patient's slices ever land in two splits."""

from __future__ import annotations

import numpy as np

from toolkit.data.errors import DataError
from toolkit.settings import SplitSettings


def split_patients(patients: list[str], split_cfg: SplitSettings) -> dict[str, list[str]]:
    """Split patient ids into train / val / test.

    From one seeded permutation of the sorted ids: with a number of test
    patients, test first, then validation, and the rest (or its first
    ``train_pool``) is the training pool; with ``test_patients: rest``,
    validation first, then the ``train_pool``, and every other patient tests.
    The first ``n_train_patients`` of the pool train. So val and test do not
    change when ``n_train_patients`` does, and smaller training sets are
    subsets of larger ones (a fair low-data curve).

    Args:
        patients: patient ids (order does not matter; duplicates are an error).
        split_cfg: the ``split`` config section: ``seed``, ``val_patients``,
            ``test_patients``, ``n_train_patients`` (None: all remaining).

    Returns:
        ``{"train", "val", "test", "unused"}``, each sorted; ``unused`` are pool
        patients outside every split this time (the ``extra_real`` control's patients).

    Raises:
        DataError: too few patients for the requested split, or bad counts.
    """
    ids = sorted(str(p) for p in patients)
    if len(set(ids)) != len(ids):
        dup = sorted({p for p in ids if ids.count(p) > 1})
        raise DataError(f"split: patient ids must be unique, found duplicates {dup}")
    n_val, n_test, n_train = split_cfg.val_patients, split_cfg.test_patients, split_cfg.n_train_patients
    pool_size = split_cfg.train_pool
    order = [ids[i] for i in np.random.default_rng(split_cfg.seed).permutation(len(ids))]
    if n_test == "rest":
        # Validation, then the training pool, then every other patient tests: more test patients for free.
        need = n_val + pool_size + 1
        if len(ids) < need:
            raise DataError(
                f"split needs at least {need} patients (val_patients={n_val} + train_pool={pool_size} + at least "
                f"1 test patient) but the data has {len(ids)}; lower split.val_patients / split.train_pool"
            )
        val, pool, test = order[:n_val], order[n_val:n_val + pool_size], order[n_val + pool_size:]
    else:
        need = n_val + n_test + (n_train or 1)
        if len(ids) < need:
            raise DataError(
                f"split needs {need} patients (val_patients={n_val} + test_patients={n_test} + "
                f"{n_train or 'at least 1'} training) but the data has {len(ids)}; lower split.val_patients / "
                "split.test_patients / split.n_train_patients or add patients"
            )
        test, val, rest = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        pool = rest if pool_size is None else rest[:pool_size]  # here train_pool is a cap
    if n_train is None or n_train >= len(pool):
        train = pool
    elif split_cfg.draw == 0:
        train = pool[:n_train]
    else:
        chosen = np.random.default_rng([split_cfg.seed, split_cfg.draw]).choice(len(pool), n_train, replace=False)
        train = [pool[i] for i in sorted(chosen)]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test),
            "unused": sorted(set(pool) - set(train))}
