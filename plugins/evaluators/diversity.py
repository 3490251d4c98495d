"""Diversity: mean pairwise MS-SSIM among synthetic slices versus among real ones.

Pairs of distinct slices of one set are compared in pixel space with MS-SSIM
(``toolkit.metrics.ssim``: three scales at 64 x 64). A collapsed generator
makes look-alike slices, so its MS-SSIM rises above the real set's; noise
makes it fall below. The primary metric is the absolute gap, so both
failures rank low; the signed gap says which one it is.
"""

from __future__ import annotations

from typing import Literal

from toolkit.metrics.features import split_slices, subsample_rows, write_record
from toolkit.metrics.ssim import mean_pairwise_ms_ssim
from toolkit.plugin import EvalContext, Evaluator
from toolkit.registry import EVALUATORS


@EVALUATORS.register("diversity")
class Diversity(Evaluator):
    """Mean pairwise MS-SSIM of synthetic vs real slices (pixel space, no feature network)."""

    metrics = ("msssim_synthetic", "msssim_real", "msssim_gap", "msssim_abs_gap", "msssim_pairs")
    primary = "msssim_abs_gap"
    higher_is_better = False
    tiny = {"pairs": 100, "max_samples": 64}

    def __init__(
        self,
        reference: Literal["train", "val", "test"] = "train",  # real split whose diversity is the target
        pairs: int = 2000,  # random pairs of distinct slices per set
        max_samples: int = 1000,  # slices per set the pairs are drawn from (seeded subsample)
    ) -> None:
        if pairs < 1 or max_samples < 2:
            raise ValueError(f"evaluators.diversity: need pairs >= 1 and max_samples >= 2, got {pairs}, {max_samples}")
        self.reference = reference
        self.pairs = pairs
        self.max_samples = max_samples

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        real = split_slices(ctx, self.reference).images
        fake = ctx.synthetic.images
        real = real[subsample_rows(len(real), self.max_samples, ctx.seed)]
        fake = fake[subsample_rows(len(fake), self.max_samples, ctx.seed)]
        if real.shape[1:] != fake.shape[1:]:
            raise ValueError(f"synthetic slices are {fake.shape[1:]}, real ones {real.shape[1:]}; they must match")
        synthetic_value, n_pairs = mean_pairwise_ms_ssim(fake, self.pairs, seed=ctx.seed)
        real_value, _ = mean_pairwise_ms_ssim(real, self.pairs, seed=ctx.seed)
        result = {
            "msssim_synthetic": synthetic_value,
            "msssim_real": real_value,
            "msssim_gap": synthetic_value - real_value,
            "msssim_abs_gap": abs(synthetic_value - real_value),
            "msssim_pairs": float(n_pairs),
        }
        write_record(ctx, "diversity", {"reference_split": self.reference, "n_real": len(real),
                                         "n_synthetic": len(fake), **result})
        return result
