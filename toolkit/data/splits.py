"""Seeded patient-level splits: no patient's slices ever land in two splits."""

from __future__ import annotations

import math

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
        if split_cfg.draw > 0:  # one possible training set: another draw would only repeat it
            raise DataError(
                f"split.draw={split_cfg.draw}: the training pool holds {len(pool)} patients and "
                f"{'all of them train' if n_train is None else f'{n_train} train'}, so there is only one training "
                "set (draw 0); another draw would count the same patients twice. Use --draws 1, or leave more "
                "patients in the pool (split.train_pool, or fewer split.test_patients / split.val_patients)")
        train = pool
    else:
        train = [pool[i] for i in drawn_subset(len(pool), n_train, split_cfg.seed, split_cfg.draw)]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test),
            "unused": sorted(set(pool) - set(train))}


def distinct_draws(pool_size: int, n_train: int) -> int:
    """How many different training sets of ``n_train`` a pool of ``pool_size`` patients holds."""
    return math.comb(pool_size, n_train) if n_train < pool_size else 1


def drawn_subset(pool_size: int, n_train: int, seed: int, draw: int) -> tuple[int, ...]:
    """Pool indices of training-set draw ``draw``: no two draws below ``distinct_draws`` are the same set.

    Draw 0 is the first ``n_train`` of the pool (so smaller training sets nest in larger ones).
    Draw ``d`` takes the seeded choice of ``(seed, d)`` and, only where it repeats an earlier
    draw's set, redraws from ``(seed, d, attempt)``: a benchmark's draws are replicates of
    *which patients train*, and a repeated set would count one replicate twice (with 4 of a
    pool of 5, three independent draws repeat a set about half the time).

    Raises:
        DataError: ``draw`` is not below the number of distinct sets.
    """
    total = distinct_draws(pool_size, n_train)
    if draw >= total:
        raise DataError(
            f"split.draw={draw}: a training pool of {pool_size} patients holds only {total} different training "
            f"set(s) of {n_train} (draws 0-{total - 1}); use fewer draws (benchmark --draws {total} at most) or "
            "a larger split.train_pool"
        )
    earlier = [tuple(range(n_train))]
    for d in range(1, draw + 1):
        attempt, chosen = 0, None
        while chosen is None or chosen in earlier:
            rng = np.random.default_rng([seed, d] if attempt == 0 else [seed, d, attempt])
            chosen = tuple(sorted(int(i) for i in rng.choice(pool_size, n_train, replace=False)))
            attempt += 1
        earlier.append(chosen)
    return earlier[draw]
