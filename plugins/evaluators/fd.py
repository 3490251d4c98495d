"""Fréchet distance and KID between synthetic and real slices in one feature space.

KID is the primary metric: it is unbiased, so it compares generators fairly
at the few hundred slices a small data set gives, where the Fréchet distance
is biased upward and its covariance is singular below the feature dimension.
The Fréchet distance is reported too, with a bootstrap interval and its N.
Metric names carry the feature space (``kid_seg``, ``fd_random``); only
Inception features give ``fid_inception``. ``features`` may list several
spaces (``[seg, radiomic]``): one evaluation then holds each space's metrics,
so re-scoring a run in a new space keeps the ones it had. The ``radiomic`` space is
compared after frd-score's normalisation against the real set, and adds
``frd_radiomic``, the Fréchet Radiomic Distance (the log of ``fd_radiomic``).
"""

from __future__ import annotations

from typing import Any, Literal

from toolkit.metrics.extractors import build_extractor
from toolkit.metrics.features import FeatureSpace, feature_spaces, metric_prefix, write_record
from toolkit.metrics.frechet import bootstrap_frechet, frechet_distance_features
from toolkit.metrics.kid import kernel_inception_distance
from toolkit.metrics.radiomics import feature_sets, frd_from_fd
from toolkit.plugin import EvalContext, Evaluator
from toolkit.registry import EVALUATORS


def _fd_metrics(features: str) -> tuple[str, ...]:
    fd, kid = metric_prefix("fd", features), metric_prefix("kid", features)
    names = (fd, f"{fd}_ci_low", f"{fd}_ci_high", f"{fd}_n_real", f"{fd}_n_synthetic", kid, f"{kid}_std",
             f"{kid}_subset_size")
    return names + ("frd_radiomic",) if features == "radiomic" else names


@EVALUATORS.register("fd")
class FrechetKID(Evaluator):
    """FD (with bootstrap interval) and KID (with std) of synthetic vs real features."""

    metrics = ("fd_seg", "fd_seg_ci_low", "fd_seg_ci_high", "fd_seg_n_real", "fd_seg_n_synthetic",
               "kid_seg", "kid_seg_std", "kid_seg_subset_size")
    primary = "kid_seg"
    higher_is_better = False
    tiny = {"features": "random", "max_samples": 64, "bootstrap": 5, "kid_subset_size": 16, "kid_subsets": 10}

    def __init__(
        self,
        features: FeatureSpace | list[FeatureSpace] = "seg",  # feature space(s), each named in its metrics
        reference: Literal["train", "val", "test"] = "train",  # real split compared against
        max_samples: int = 1000,  # slices per set (seeded subsample); keep equal across generators
        bootstrap: int = 20,  # FD bootstrap rounds for the 95% interval; 0 to skip
        kid_subset_size: int = 100,  # KID subset size, clipped to the smaller set
        kid_subsets: int = 100,  # KID subsets drawn; the std is over these
        random_seed: int = 0,  # seed of the random CNN (features: random)
        inception_weights: str | None = None,  # path to pt_inception-2015-12-05-6726825d.pth; None: torch hub cache
    ) -> None:
        if max_samples < 2 or kid_subset_size < 2 or kid_subsets < 1 or bootstrap < 0:
            raise ValueError(
                "evaluators.fd: max_samples and kid_subset_size must be >= 2, kid_subsets >= 1, "
                f"bootstrap >= 0; got {max_samples}, {kid_subset_size}, {kid_subsets}, {bootstrap}"
            )
        self.spaces = feature_spaces(features, "fd")
        self.reference = reference
        self.max_samples = max_samples
        self.bootstrap = bootstrap
        self.kid_subset_size = kid_subset_size
        self.kid_subsets = kid_subsets
        self.random_seed = random_seed
        self.inception_weights = inception_weights
        self.metrics = tuple(name for space in self.spaces for name in _fd_metrics(space))
        self.primary = metric_prefix("kid", self.spaces[0])

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        result: dict[str, float] = {}
        for space in self.spaces:
            result.update(self.evaluate_space(ctx, space))
        return result

    def evaluate_space(self, ctx: EvalContext, features: str) -> dict[str, float]:
        extractor = build_extractor(features, ctx, self.random_seed, self.inception_weights)
        real, fake = feature_sets(ctx, extractor, self.reference, self.max_samples)
        fd, kid = metric_prefix("fd", features), metric_prefix("kid", features)
        low, high = bootstrap_frechet(real, fake, self.bootstrap, seed=ctx.seed)
        kid_mean, kid_std, subset = kernel_inception_distance(
            real, fake, self.kid_subset_size, self.kid_subsets, seed=ctx.seed)
        result: dict[str, Any] = {
            fd: frechet_distance_features(real, fake),
            f"{fd}_ci_low": low,
            f"{fd}_ci_high": high,
            f"{fd}_n_real": float(len(real)),
            f"{fd}_n_synthetic": float(len(fake)),
            kid: kid_mean,
            f"{kid}_std": kid_std,
            f"{kid}_subset_size": float(subset),
        }
        if features == "radiomic":
            result["frd_radiomic"] = frd_from_fd(result[fd])
        write_record(ctx, f"fd_{features}", {
            "features": features, "feature_fingerprint": extractor.fingerprint,
            "feature_dim": int(real.shape[1]), "reference_split": self.reference,
            "bootstrap_rounds": self.bootstrap, "kid_subsets": self.kid_subsets, **result,
        })
        return result
