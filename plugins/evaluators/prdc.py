"""Precision, recall, density and coverage (Naeem et al. 2020) of synthetic vs real features.

Coverage is the primary metric: it rewards synthetic slices that land near
many different real slices (fidelity and variety at once) and, unlike
recall, is not inflated by synthetic outliers. In the ``radiomic`` space the
features are z-scored against the real set first (frd-score's
normalisation), so no feature's units dominate. ``features`` may list
several spaces, as for ``fd``.
"""

from __future__ import annotations

from typing import Literal

from toolkit.metrics.extractors import build_extractor
from toolkit.metrics.features import FeatureSpace, feature_spaces, write_record
from toolkit.metrics.prdc import prdc
from toolkit.metrics.radiomics import feature_sets
from toolkit.plugin import EvalContext, Evaluator
from toolkit.registry import EVALUATORS


@EVALUATORS.register("prdc")
class PRDC(Evaluator):
    """k-NN manifold precision / recall / density / coverage."""

    metrics = ("precision_seg", "recall_seg", "density_seg", "coverage_seg",
               "prdc_seg_n_real", "prdc_seg_n_synthetic")
    primary = "coverage_seg"
    higher_is_better = True
    tiny = {"features": "random", "max_samples": 64, "k": 3}

    def __init__(
        self,
        features: FeatureSpace | list[FeatureSpace] = "seg",  # feature space(s), each named in its metrics
        reference: Literal["train", "val", "test"] = "train",  # real split compared against
        k: int = 5,  # neighbours defining each sample's ball (Naeem et al. use 5)
        max_samples: int = 1000,  # slices per set (seeded subsample); keep equal across generators
        random_seed: int = 0,  # seed of the random CNN (features: random)
        inception_weights: str | None = None,  # path to pt_inception-2015-12-05-6726825d.pth; None: torch hub cache
    ) -> None:
        if k < 1 or max_samples <= k:
            raise ValueError(f"evaluators.prdc: need k >= 1 and max_samples > k, got k={k}, max_samples={max_samples}")
        self.spaces = feature_spaces(features, "prdc")
        self.reference = reference
        self.k = k
        self.max_samples = max_samples
        self.random_seed = random_seed
        self.inception_weights = inception_weights
        self.metrics = tuple(name for f in self.spaces for name in (
            f"precision_{f}", f"recall_{f}", f"density_{f}", f"coverage_{f}", f"prdc_{f}_n_real",
            f"prdc_{f}_n_synthetic"))
        self.primary = f"coverage_{self.spaces[0]}"

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        result: dict[str, float] = {}
        for space in self.spaces:
            result.update(self.evaluate_space(ctx, space))
        return result

    def evaluate_space(self, ctx: EvalContext, f: str) -> dict[str, float]:
        extractor = build_extractor(f, ctx, self.random_seed, self.inception_weights)
        real, fake = feature_sets(ctx, extractor, self.reference, self.max_samples)
        scores = prdc(real, fake, self.k)
        result = {f"{name}_{f}": value for name, value in scores.items()}
        result[f"prdc_{f}_n_real"] = float(len(real))
        result[f"prdc_{f}_n_synthetic"] = float(len(fake))
        write_record(ctx, f"prdc_{f}", {
            "features": f, "feature_fingerprint": extractor.fingerprint, "k": self.k,
            "reference_split": self.reference, **result,
        })
        return result
