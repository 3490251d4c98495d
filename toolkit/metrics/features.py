"""Features of the real splits (cached on disk) and of the synthetic set (cached per evaluation).

Real-set features depend only on the data, the split's patients, the
subsample and the feature network, so they are computed once and kept under
``ctx.cache_dir/quality``, keyed by a hash of exactly those (data
fingerprint, split name and patients, subsample size and seed, extractor
fingerprint). Ranking N generators then extracts real features once.
Synthetic features are kept in ``ctx.memo`` so the evaluators of one
evaluation (fd, prdc, memorization) extract them once.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from toolkit.io import DAMAGED, atomic_write
from toolkit.metrics.extractors import FeatureExtractor

if TYPE_CHECKING:
    from toolkit.data.slices import SliceSet
    from toolkit.plugin import EvalContext

SPLITS = ("train", "val", "test")
CACHE_VERSION = 1


def subsample_rows(n: int, max_samples: int | None, seed: int) -> np.ndarray:
    """Sorted row indices: all rows, or a seeded random subset of ``max_samples``."""
    if max_samples is None or n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


def split_slices(ctx: EvalContext, split: str) -> SliceSet:
    if split not in SPLITS:
        raise ValueError(f"unknown real split {split!r}; valid: {', '.join(SPLITS)}")
    slices = getattr(ctx, split)
    if len(slices) == 0:
        raise ValueError(f"the real {split} split has no slices; quality metrics need some")
    return slices


def real_cache_key(ctx: EvalContext, split: str, extractor: FeatureExtractor, rows: np.ndarray) -> str:
    slices = split_slices(ctx, split)
    payload = {
        "version": CACHE_VERSION,
        "data": ctx.data_fingerprint,
        "split": split,
        "patients": sorted(slices.patients()),
        "slices": slices.identity(),
        "rows": hashlib.sha256(rows.astype(np.int64).tobytes()).hexdigest(),
        "features": extractor.fingerprint,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def real_features(ctx: EvalContext, split: str, extractor: FeatureExtractor,
                  max_samples: int | None = None) -> np.ndarray:
    """Features [N, D] of a real split (a seeded subsample of ``max_samples``), from the cache when present."""
    slices = split_slices(ctx, split)
    rows = subsample_rows(len(slices), max_samples, ctx.seed)
    key = real_cache_key(ctx, split, extractor, rows)
    path = Path(ctx.cache_dir) / "quality" / f"{split}-{extractor.name}-{key}.npy"

    def load_or_extract() -> np.ndarray:
        if path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.ndim != 2 or len(cached) != len(rows):
                    raise ValueError(f"holds {list(cached.shape)} features for {len(rows)} slices")
                return cached
            except DAMAGED as exc:  # a cache entry: recomputed, never worth stopping a run for
                warnings.warn(f"cached features {path} are damaged ({type(exc).__name__}: {exc}); computing them "
                              "again (nothing else is affected)", stacklevel=2)
        feats = extractor(slices.images[rows])
        atomic_write(path, lambda f: np.save(f, feats))  # a killed run never leaves a half-written file
        return feats

    return ctx.memo.get_or_compute(f"quality_features:{key}", load_or_extract)


def synthetic_features(ctx: EvalContext, extractor: FeatureExtractor,
                       max_samples: int | None = None) -> np.ndarray:
    """Features [N, D] of the synthetic set (a seeded subsample), shared within one evaluation."""
    if len(ctx.synthetic) == 0:
        raise ValueError("the synthetic set is empty; nothing to evaluate")
    rows = subsample_rows(len(ctx.synthetic), max_samples, ctx.seed)
    images = np.ascontiguousarray(ctx.synthetic.images[rows])
    # Keyed by content, so a memo reused across generators never serves stale features.
    content = hashlib.sha256(images.tobytes()).hexdigest()[:20]
    return ctx.memo.get_or_compute(f"quality_features:synthetic:{extractor.fingerprint}:{content}",
                                   lambda: extractor(images))


#: The feature spaces fd and prdc compare sets in.
FeatureSpace = Literal["seg", "random", "inception", "radiomic"]


def feature_spaces(features: str | list[str], evaluator: str) -> list[str]:
    """``features`` as a list of distinct spaces (one space or several)."""
    spaces = [features] if isinstance(features, str) else list(features)
    if not spaces or len(set(spaces)) != len(spaces):
        raise ValueError(f"evaluators.{evaluator}.features: one feature space or a list of distinct ones "
                         f"(seg, random, inception, radiomic), got {features!r}")
    return spaces


def metric_prefix(kind: str, features: str) -> str:
    """Metric names say their features: ``fid_inception`` only for Inception, else ``fd_<features>``."""
    if kind == "fd":
        return "fid_inception" if features == "inception" else f"fd_{features}"
    return f"{kind}_{features}"


def write_record(ctx: EvalContext, name: str, record: dict) -> Path:
    """Write the evaluation's provenance (feature space, N, settings) as JSON under ``run_dir/quality``."""
    path = Path(ctx.run_dir) / "quality" / f"{name}.json"
    return atomic_write(path, json.dumps(record, indent=2, sort_keys=True, default=float) + "\n")
