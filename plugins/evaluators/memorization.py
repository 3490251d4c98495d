"""Memorisation: is each synthetic slice closer to a training slice than new patients are?

For every synthetic slice, the distance to its nearest real training slice
is compared with the same distance for real validation slices: slices of
patients the generator never saw, so their nearest-train distances show how
close an honest new image gets by chance. A synthetic slice is flagged as a
copy when both hold:

- absolute: its nearest-train distance is below the ``percentile``-th
  percentile of the validation slices' nearest-train distances;
- relative: its nearest-train distance divided by its nearest-validation
  distance is below the ``percentile``-th percentile of the same ratio for
  validation slices (whose nearest-validation neighbour is taken from the
  other validation patients).

The relative test is what keeps blurry, average-looking samples from being
called copies: they are close to everything, training and validation slices
alike (ratio near 1), while a copy is close to one training slice only (ratio
near 0). A generator that makes new slices like the validation ones flags at
most about ``percentile`` % (``memorized_expected``); a copying one flags far
more. The closest pairs are saved side by side (TensorBoard and
``run_dir/memorization_pairs.png``) for a look by eye.

Distances are RMS pixel differences by default: at 64 x 64 a copy is a
near-exact pixel match, and pixels need no network. A feature space can be
chosen instead (distances are then Euclidean in that space).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from toolkit.metrics.extractors import build_extractor
from toolkit.metrics.features import real_features, split_slices, subsample_rows, write_record
from toolkit.metrics.nearest import nearest_neighbour
from toolkit.plugin import EvalContext, Evaluator
from toolkit.registry import EVALUATORS


@EVALUATORS.register("memorization")
class Memorization(Evaluator):
    """Fraction of synthetic slices nearer to a training slice than real new patients are."""

    metrics = ("memorized_fraction_pixel", "near_train_fraction_pixel", "memorized_expected", "nn_threshold_pixel",
               "nn_dist_synthetic_median_pixel", "nn_dist_val_median_pixel", "nn_dist_ratio_pixel")
    primary = "memorized_fraction_pixel"
    higher_is_better = False
    tiny = {"max_samples": 64, "pairs_shown": 4}

    def __init__(
        self,
        features: Literal["pixel", "seg", "random", "inception"] = "pixel",  # distance space
        percentile: float = 5.0,  # threshold: this percentile of val-to-train nearest distances
        max_samples: int = 1000,  # synthetic slices checked (seeded subsample); all train slices are searched
        pairs_shown: int = 8,  # closest (synthetic, train) pairs saved as an image
        random_seed: int = 0,  # seed of the random CNN (features: random)
        inception_weights: str | None = None,  # path to pt_inception-2015-12-05-6726825d.pth; None: torch hub cache
    ) -> None:
        if not 0 < percentile < 100 or max_samples < 1 or pairs_shown < 0:
            raise ValueError(
                "evaluators.memorization: need 0 < percentile < 100, max_samples >= 1, pairs_shown >= 0; "
                f"got {percentile}, {max_samples}, {pairs_shown}"
            )
        self.features = features
        self.percentile = percentile
        self.max_samples = max_samples
        self.pairs_shown = pairs_shown
        self.random_seed = random_seed
        self.inception_weights = inception_weights
        f = features
        self.metrics = (f"memorized_fraction_{f}", f"near_train_fraction_{f}", "memorized_expected", f"nn_threshold_{f}",
                        f"nn_dist_synthetic_median_{f}", f"nn_dist_val_median_{f}", f"nn_dist_ratio_{f}")
        self.primary = f"memorized_fraction_{f}"

    @staticmethod
    def _val_to_other_val(val: np.ndarray, patients: np.ndarray) -> np.ndarray:
        """Each validation slice's distance to the nearest slice of another validation patient."""
        dist = np.full(len(val), np.inf)
        for patient in np.unique(patients):
            own = patients == patient
            if (~own).any():
                dist[own], _ = nearest_neighbour(val[own], val[~own])
        return dist

    def _vectors(self, ctx: EvalContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train, val, synthetic) vectors in the chosen space, and the synthetic rows used."""
        train_images = split_slices(ctx, "train").images
        val_images = split_slices(ctx, "val").images
        rows = subsample_rows(len(ctx.synthetic), self.max_samples, ctx.seed)
        fake_images = ctx.synthetic.images[rows]
        if fake_images.shape[1:] != train_images.shape[1:]:
            raise ValueError(
                f"synthetic slices are {fake_images.shape[1:]}, real ones {train_images.shape[1:]}; they must match"
            )
        if self.features == "pixel":
            # RMS difference per pixel: comparable across image sizes, in intensity units of [-1, 1].
            scale = np.sqrt(train_images[0].size)

            def flat(x: np.ndarray) -> np.ndarray:
                return x.reshape(len(x), -1).astype(np.float64) / scale

            return flat(train_images), flat(val_images), flat(fake_images), rows
        extractor = build_extractor(self.features, ctx, self.random_seed, self.inception_weights)
        return (real_features(ctx, "train", extractor), real_features(ctx, "val", extractor),
                extractor(fake_images), rows)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        train, val, fake, rows = self._vectors(ctx)
        val_dist, _ = nearest_neighbour(val, train)
        fake_dist, fake_nn = nearest_neighbour(fake, train)
        threshold = float(np.percentile(val_dist, self.percentile))
        # Relative test: near one training slice, not near new patients' slices as well.
        val_ratio = val_dist / np.maximum(self._val_to_other_val(val, split_slices(ctx, "val").patient), 1e-12)
        ratio_threshold = float(np.percentile(val_ratio[np.isfinite(val_ratio)], self.percentile)) \
            if np.isfinite(val_ratio).any() else 0.0
        fake_ratio = fake_dist / np.maximum(nearest_neighbour(fake, val)[0], 1e-12)
        flagged = (fake_dist < threshold) & (fake_ratio < ratio_threshold)
        f = self.features
        val_median = float(np.median(val_dist))
        fake_median = float(np.median(fake_dist))
        result = {
            f"memorized_fraction_{f}": float(flagged.mean()),
            f"near_train_fraction_{f}": float((fake_dist < threshold).mean()),
            "memorized_expected": self.percentile / 100,
            f"nn_threshold_{f}": threshold,
            f"nn_ratio_threshold_{f}": ratio_threshold,
            f"nn_dist_synthetic_median_{f}": fake_median,
            f"nn_dist_val_median_{f}": val_median,
            f"nn_dist_ratio_{f}": fake_median / val_median if val_median > 0 else float("nan"),
        }
        if self.pairs_shown:
            closest = np.argsort(fake_ratio, kind="stable")[: self.pairs_shown]
            self._save_pairs(ctx, rows[closest], fake_nn[closest])
        write_record(ctx, f"memorization_{f}", {
            "features": f, "percentile": self.percentile, "n_synthetic": len(fake), "n_train": len(train),
            "n_val": len(val), **result,
        })
        return result

    def _save_pairs(self, ctx: EvalContext, fake_rows: np.ndarray, train_rows: np.ndarray) -> Path:
        """Closest pairs as a grid: one row per pair, synthetic left, its nearest training slice right."""
        from torchvision.utils import make_grid, save_image  # slow to import; only needed here

        fake = torch.from_numpy(np.asarray(ctx.synthetic.images[fake_rows], dtype=np.float32))
        real = torch.from_numpy(np.asarray(ctx.train.images[train_rows], dtype=np.float32))
        pairs = torch.stack([fake, real], dim=1).reshape(-1, 1, *fake.shape[1:])  # fake0, real0, fake1, ...
        grid = make_grid(pairs, nrow=2, padding=2, normalize=True, value_range=(-1, 1), pad_value=1.0)
        path = Path(ctx.run_dir) / "memorization_pairs.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        if ctx.writer is not None:
            ctx.writer.add_image(f"memorization/closest_pairs_{self.features}", grid, ctx.step)
        return path
