"""dice_gain: how much a generator's synthetic pairs raise a U-Net's Dice on unseen real patients.

Protocol (docs/evaluation.md has the full text):

1. Baseline: a U-Net trained on the real training slices (cached per data,
   split, segmenter settings and seed; ``ctx.baselines``). The U-Net's
   settings are the core ``seg`` section, shared with the ``seg`` feature space.
2. Usage modes (``modes``, each a scored arm; the first is the primary ``dice_gain``), same U-Net,
   seed and optimizer steps: ``replace`` (batches drawn at ``ratio`` synthetic:real), ``add`` (a full
   real batch plus ``ratio`` x batch synthetic pairs every step, their loss weighted by
   ``synthetic_weight``), ``pretrain`` (synthetic only for ``pretrain_share`` of the steps, then real);
   ``compute_control`` adds ``add_real``: add's extra items spent on more augmented real pairs, so
   that ``add`` wins only by its data (``dice_gain_add_vs_add_real``).
3. TSTR: the same, on synthetic slices only.
4. Controls (optional), used as the primary mode uses the synthetic pool: the synthetic pool replaced by real slices resampled
   to the synthetic set's share of gland slices (``balanced_real``), and
   additionally blurred to its sharpness (``blurred_real``); the positive
   control ``extra_real``: real pairs of patients outside every split.

All U-Nets of one evaluation (the baselines not cached yet included) train
together through ``toolkit.seg.batched.train_unets``: on a CPU, under
``seg.processes`` (default auto), in 1-thread worker processes, each U-Net
bit-for-bit ``train_unet``'s at one thread. Every arm selects its best state
on real validation Dice and is scored by 3D Dice per test patient. The primary metric is the mean paired gain
(augmented - baseline) over seeds and test patients, with a two-way bootstrap
95% CI, a Wilcoxon signed-rank p-value, and what this design can resolve: the
CI half-width and the minimum detectable effect at 80% power (from the
measured seed, patient and residual variance components).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch

from toolkit.data.slices import SliceSet
from toolkit.plugin import EvalContext, Evaluator
from toolkit.registry import EVALUATORS
from toolkit.runtime import reproducible, resolve_precision
from toolkit.schema import PositiveFloat, PositiveInt, Range
from toolkit.seg.batched import Job, plan, train_unets
from toolkit.seg.controls import CONTROLS, blur, gland_share_weights, match_sharpness
from toolkit.seg.predict import predict_probs, score_patients
from toolkit.seg.report import per_patient_plot, save_png, write_csv
from toolkit.seg.stats import movers, paired_summary
from toolkit.seg.train import Feed, Pool, TrainResult

#: How an arm uses its synthetic (or control) pairs; see :meth:`DiceGain.feed`.
Mode = Literal["replace", "add", "pretrain"]
MODES = ("replace", "add", "pretrain")
#: The equal-compute control of ``add``: the extra items are more augmented real pairs.
ADD_REAL = "add_real"

log = logging.getLogger(__name__)


def _check_sets(ctx: EvalContext) -> None:
    for name in ("train", "val", "test", "synthetic"):
        slices: SliceSet = getattr(ctx, name)
        if len(slices) == 0:
            raise ValueError(f"dice_gain: the {name} set is empty")
        if slices.images.shape[1:] != ctx.train.images.shape[1:]:
            raise ValueError(
                f"dice_gain: {name} slices are {slices.images.shape[1:]}, training slices "
                f"{ctx.train.images.shape[1:]}; all sets need one image size"
            )
        values = np.unique(slices.masks)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"dice_gain: {name} masks must be 0/1, found values {values[:10].tolist()}")


def pooled_dice_ci(inter: np.ndarray, total: np.ndarray, samples: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap CI of a pooled Dice ``2 sum(inter) / sum(total)``, resampling slices.

    ``inter`` and ``total`` are per slice (overlap, and predicted + true pixels). Resamples
    with no foreground at all count as Dice 1, as the point estimate does.
    """
    if len(inter) == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(inter), size=(samples, len(inter)))
    num, den = 2 * inter[idx].sum(1).astype(float), total[idx].sum(1).astype(float)
    dice = np.divide(num, den, out=np.ones(samples), where=den > 0)
    low, high = np.quantile(dice, [0.025, 0.975])
    return float(low), float(high)


@EVALUATORS.register("dice_gain")
class DiceGain(Evaluator):
    """Rank a synthetic set by the Dice it adds to a U-Net trained on few real patients."""

    metrics: ClassVar[tuple[str, ...]] = (
        "dice_gain", "dice_gain_ci_low", "dice_gain_ci_high", "dice_gain_p_wilcoxon", "dice_gain_ci_halfwidth",
        "dice_gain_mde80",
        "dice_baseline", "dice_augmented", "dice_tstr", "tstr_gap", "label_fidelity_dice",
    )
    primary: ClassVar[str] = "dice_gain"
    higher_is_better: ClassVar[bool] = True
    tiny: ClassVar[dict[str, Any]] = {"seeds": 1, "bootstrap": 200}

    def __init__(
        self,
        *,
        seeds: PositiveInt = 3,  # U-Net seeds per arm: 0 .. seeds-1, whatever the experiment seed
        ratio: PositiveFloat = 1.0,  # synthetic:real share of each augmented batch
        tstr: bool = True,  # also train on synthetic only (train-synthetic-test-real)
        controls: tuple[str, ...] = (),  # control arms: balanced_real, blurred_real, extra_real (positive)
        label_fidelity: bool = True,  # baseline U-Net Dice on synthetic images vs their masks
        bootstrap: Annotated[int, Range(min=100)] = 2000,  # bootstrap resamples for the 95% CI
        # How the synthetic pairs are used, each a scored arm against the same baseline; the first is the
        # primary `dice_gain` (and the one the controls follow). replace: batches drawn at ratio
        # synthetic:real; add: a full real batch plus ratio x batch synthetic pairs every step, their loss
        # weighted by synthetic_weight; pretrain: synthetic only for pretrain_share of the steps, then real.
        modes: tuple[Mode, ...] = ("add",),
        synthetic_weight: Annotated[float, Range(min=0)] = 1.0,  # add: loss weight of the synthetic part
        pretrain_share: Annotated[float, Range(min=0, max=1, min_open=True, max_open=True)] = 0.5,
        compute_control: bool = False,  # add: also an arm spending the extra items on augmented real pairs
    ) -> None:
        unknown = sorted(set(controls) - set(CONTROLS))
        if unknown:
            raise ValueError(f"evaluators.dice_gain.controls: unknown control(s) {unknown}; "
                             f"valid: {', '.join(CONTROLS)}")
        self.seeds = seeds
        self.ratio = float(ratio)
        self.tstr = tstr
        self.controls = tuple(controls)
        self.label_fidelity = label_fidelity
        self.bootstrap = bootstrap
        if not modes:
            raise ValueError("evaluators.dice_gain.modes: give at least one of " + ", ".join(MODES))
        self.modes = tuple(dict.fromkeys(modes))
        self.synthetic_weight = float(synthetic_weight)
        self.pretrain_share = float(pretrain_share)
        self.compute_control = compute_control
        # What a run prints: the class's metrics, then each mode's gain with its CI, and convergence.
        arms = [*self.modes, *([ADD_REAL] if compute_control else [])]
        self.metrics = (*type(self).metrics,
                        *(f"dice_gain_{m}{suffix}" for m in arms for suffix in ("", "_ci_low", "_ci_high")),
                        *(["dice_gain_add_vs_add_real"] if compute_control and "add" in self.modes else []),
                        "converged_baseline", *(f"converged_{m}" for m in arms))

    # The evaluation -------------------------------------------------------------------------

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        _check_sets(ctx)
        how = plan(ctx.seg, ctx.device)  # seg.processes / seg.threads: U-Nets at once, threads per U-Net
        with reproducible(how.threads, ctx.device) as threads:
            return self._evaluate(ctx, threads, how.processes)

    def feed(self, mode: str, real: Pool, other: Pool, seg) -> Feed:
        """One arm's batches: the real training pool used with ``other`` (synthetic or a control) by ``mode``."""
        if mode == "replace":
            return Feed((real, replace(other, share=self.ratio)))
        if mode in ("add", ADD_REAL):
            return Feed((real,), extra=(other,), extra_size=max(1, round(self.ratio * seg.batch_size)),
                        extra_weight=self.synthetic_weight)
        if mode == "pretrain":
            return Feed((real,), pretrain=(other,), pretrain_steps=max(1, round(self.pretrain_share * seg.steps)))
        raise ValueError(f"evaluators.dice_gain.modes: unknown mode {mode!r}; valid: {', '.join(MODES)}")

    def _arms(self, ctx: EvalContext) -> tuple[dict[str, Feed], dict[str, float]]:
        """The feed of every non-baseline arm (one per mode, TSTR, controls), and facts about the controls."""
        real_set, synthetic_set = ctx.train, ctx.synthetic
        real, synthetic = Pool.of(real_set, name="real"), Pool.of(synthetic_set, name="synthetic")
        primary = self.modes[0]
        arms = {mode: self.feed(mode, real, synthetic, ctx.seg) for mode in self.modes}
        if self.compute_control:
            arms[ADD_REAL] = self.feed(ADD_REAL, real, Pool.of(real_set, name="add_real"), ctx.seg)
        if self.tstr:
            arms["tstr"] = Feed((synthetic,))
        info: dict[str, float] = {
            "synthetic_gland_share": float(synthetic_set.has_gland().mean()),
            "real_gland_share": float(real_set.has_gland().mean()),
        }
        if self.controls:  # each replaces the synthetic pool in the primary mode's feed
            weights, achieved = gland_share_weights(real_set.has_gland(), info["synthetic_gland_share"])
            info["control_gland_share"] = achieved
            if "balanced_real" in self.controls:
                arms["balanced_real"] = self.feed(primary, real, Pool.of(real_set, weights=weights,
                                                                         name="balanced_real"), ctx.seg)
            if "blurred_real" in self.controls:
                # Match sharpness on a fixed subset (first 256 of each), enough for a mean gradient.
                sigma = match_sharpness(real_set.to_batch(slice(0, 256)).image,
                                        synthetic_set.to_batch(slice(0, 256)).image)
                info["blurred_real_sigma"] = sigma
                arms["blurred_real"] = self.feed(primary, real, Pool.of(
                    real_set, weights=weights, name="blurred_real",
                    transform=functools.partial(blur, sigma=sigma)), ctx.seg)  # picklable for workers
            if "extra_real" in self.controls:
                if ctx.extra is None or len(ctx.extra) == 0:
                    raise ValueError("dice_gain: the extra_real control needs real patients outside every split: "
                                     "set split.train_pool larger than split.n_train_patients")
                info["extra_real_patients"] = float(len(ctx.extra.patients()))
                arms["extra_real"] = self.feed(primary, real, Pool.of(ctx.extra, name="extra_real"), ctx.seg)
        return arms, info

    def _evaluate(self, ctx: EvalContext, threads: int, processes: int) -> dict[str, float]:
        started = time.perf_counter()
        out_dir = ctx.run_dir / "dice_gain"
        seg = ctx.seg
        amp = resolve_precision(seg.precision, ctx.device)
        # U-Net seeds do not follow the experiment seed, so generator seeds share cached baselines.
        seeds = list(range(self.seeds))
        arms, info = self._arms(ctx)
        arm_names = ["baseline", *arms]
        patients = ctx.test.patients()

        # Train every U-Net of the evaluation together: the baselines not yet cached, and every other arm
        # for every seed (seg.processes: spread over worker processes; each job is train_unet's own result).
        missing = ctx.baselines.missing(seeds)
        names = [("baseline", seed) for seed in missing] + [(arm, seed) for seed in seeds for arm in arms]
        jobs = [ctx.baselines.job(seed) for seed in missing] + [Job(arms[arm], seed) for seed in seeds
                                                                for arm in arms]
        train_started = time.perf_counter()
        trained_models = dict(zip(names, train_unets(jobs, ctx.val, seg, ctx.device, processes=processes,
                                                     threads=threads)))
        train_seconds = time.perf_counter() - train_started
        log.info("dice_gain: %d U-Nets trained in %.0f s (%d process(es) x %d thread(s))", len(jobs),
                 train_seconds, min(processes, max(len(jobs), 1)), threads)
        for seed in missing:
            ctx.baselines.add(seed, trained_models[("baseline", seed)])

        # Score every arm and seed on the test patients.
        dice = {arm: np.zeros((len(seeds), len(patients))) for arm in arm_names}
        hd = {arm: np.zeros((len(seeds), len(patients))) for arm in arm_names}
        rows, arm_rows = [], []
        baseline_models: list[TrainResult] = []  # seed order
        converged = {arm: [] for arm in arm_names}
        for i, seed in enumerate(seeds):
            for arm in arm_names:
                if arm == "baseline":
                    result, trained = ctx.baselines.get(seed)[0], seed in missing
                    baseline_models.append(result)
                else:
                    result, trained = trained_models[(arm, seed)], True
                log.info("dice_gain: seed %d %s: val Dice %.3f at step %d (%s, %.0f s)", seed, arm,
                         result.best_val_dice, result.best_step, "trained" if trained else "cached",
                         result.seconds)
                scores = score_patients(result.model, ctx.test, device=ctx.device, amp_dtype=amp,
                                        channels_last=seg.channels_last)
                for j, s in enumerate(scores):
                    dice[arm][i, j], hd[arm][i, j] = s.dice, s.hd95
                    rows.append({"arm": arm, "seed": seed, **vars(s)})
                facts = result.convergence(seg.steps)
                converged[arm].append(facts["converged"])
                feed = ctx.baselines.job(seed).feed if arm == "baseline" else arms[arm]
                arm_rows.append({
                    "arm": arm, "seed": seed, "dice_mean": float(dice[arm][i].mean()),
                    "best_step": result.best_step, "best_val_dice": float(result.best_val_dice),
                    "steps_done": int(facts["steps_done"]), "late_rise": facts["late_rise"],
                    "converged": int(facts["converged"]), "images_per_step": feed.images_per_step(seg.batch_size),
                    "images_seen": result.images_seen,
                    "train_seconds": float(result.seconds), "trained_now": int(trained),
                })
        baselines_trained = len(missing)

        # Statistics: the gain and its uncertainty, per arm summaries, controls.
        primary = self.modes[0]
        gain = paired_summary(dice["baseline"], dice[primary], self.bootstrap, seed=0)
        metrics: dict[str, float] = gain.as_metrics("dice_gain")
        for arm in arm_names:
            metrics[f"dice_{arm}"] = float(dice[arm].mean())
            metrics[f"dice_{arm}_std"] = float(dice[arm].std(ddof=1)) if dice[arm].size > 1 else 0.0
            metrics[f"hd95_{arm}"] = float(hd[arm].mean())
            metrics[f"converged_{arm}"] = float(np.mean(converged[arm]))  # share of seeds that converged
        metrics["dice_augmented"] = metrics[f"dice_{primary}"]
        for mode in [*self.modes, *([ADD_REAL] if self.compute_control else [])]:
            metrics.update(paired_summary(dice["baseline"], dice[mode], self.bootstrap, seed=0)
                           .as_metrics(f"dice_gain_{mode}"))
            metrics[f"images_per_step_{mode}"] = float(arms[mode].images_per_step(seg.batch_size))
        if self.compute_control and "add" in self.modes:  # add's gain from its data, not its compute
            metrics.update(paired_summary(dice[ADD_REAL], dice["add"], self.bootstrap, seed=0)
                           .as_metrics("dice_gain_add_vs_add_real"))
        if metrics["converged_baseline"] < 1:
            log.warning("dice_gain: the real-only baseline did not converge for %d of %d seed(s) (val Dice still "
                        "rising over the last quarter of seg.steps=%d): gains are measured against an "
                        "under-trained segmenter; raise seg.steps (benchmarks/results/seg_learning_curve.md)",
                        round((1 - metrics["converged_baseline"]) * len(seeds)), len(seeds), seg.steps)
        # Declared metrics are always present; NaN marks an arm that was switched off.
        if self.tstr:
            metrics["tstr_gap"] = metrics["dice_tstr"] - metrics["dice_baseline"]
        else:
            metrics["dice_tstr"] = metrics["tstr_gap"] = float("nan")
        control_summaries = {}
        for control in self.controls:
            summary = paired_summary(dice[control], dice[primary], self.bootstrap, seed=0)
            control_summaries[control] = summary
            metrics.update(summary.as_metrics(f"dice_gain_vs_{control}"))
            metrics.update(paired_summary(dice["baseline"], dice[control], self.bootstrap, seed=0)
                           .as_metrics(f"{control}_gain"))
        if self.label_fidelity:
            metrics.update(self._label_fidelity(ctx, baseline_models[0].model, amp, seg.channels_last))
        else:
            metrics["label_fidelity_dice"] = float("nan")
        metrics.update({k: float(v) for k, v in info.items()})
        metrics.update({
            "threads": float(threads),
            "processes": float(min(processes, max(len(jobs), 1))),
            "train_seconds": train_seconds,
            "seeds": float(len(seeds)),
            "steps": float(seg.steps),
            "ratio": self.ratio,
            "synthetic_weight": self.synthetic_weight,
            "bf16": float(amp is torch.bfloat16),
            "n_train_patients": float(len(ctx.train.patients())),
            "n_test_patients": float(len(patients)),
            "baselines_trained": float(baselines_trained),
            "seconds": time.perf_counter() - started,
        })

        self._write(ctx, out_dir, rows, arm_rows, patients, dice, gain, control_summaries, metrics)
        return metrics

    @torch.no_grad()
    def _label_fidelity(self, ctx: EvalContext, model: torch.nn.Module, amp: torch.dtype | None,
                        channels_last: bool) -> dict[str, float]:
        """Does the synthetic mask match what the real-trained U-Net sees in the synthetic image?

        The same U-Net's Dice on real pairs is the scale to read it against: on the real
        training slices (which it was fitted to) and on the validation slices (held out). A
        generator that reproduced real pairs exactly would score about the training-slice
        figure; scores far above the held-out one mean images easier than real ones (a blurry
        prototype of a gland is easy), far below, masks the image does not support. Each
        figure has a 95% bootstrap CI over slices: a synthetic set as large as the training
        set (a few dozen slices on 4 real patients) pins fidelity down to a few hundredths only.
        """
        out = {}
        for key, slices in (("label_fidelity", ctx.synthetic), ("label_fidelity_real_train", ctx.train),
                            ("label_fidelity_real_val", ctx.val)):
            if len(slices) == 0:  # e.g. no validation patients
                out[f"{key}_dice"] = out[f"{key}_slice_dice"] = float("nan")
                out[f"{key}_dice_ci_low"] = out[f"{key}_dice_ci_high"] = float("nan")
                continue
            pred = predict_probs(model, slices.images, device=ctx.device, amp_dtype=amp,
                                 channels_last=channels_last) > 0.5
            truth = slices.masks.astype(bool)
            inter = np.logical_and(pred, truth).reshape(len(slices), -1).sum(1)
            total = pred.reshape(len(slices), -1).sum(1) + truth.reshape(len(slices), -1).sum(1)
            gland = truth.reshape(len(slices), -1).any(1)
            out[f"{key}_dice"] = float(2 * inter.sum() / total.sum()) if total.sum() else 1.0
            out[f"{key}_dice_ci_low"], out[f"{key}_dice_ci_high"] = pooled_dice_ci(inter, total, self.bootstrap)
            out[f"{key}_slice_dice"] = float((2 * inter[gland] / total[gland]).mean()) if gland.any() \
                else float("nan")
        return out

    def _write(self, ctx, out_dir, rows, arm_rows, patients, dice, gain, control_summaries, metrics) -> None:
        """Tables, figure, summary and TensorBoard scalars of one evaluation."""
        write_csv(out_dir / "per_patient.csv", rows)
        write_csv(out_dir / "arms.csv", arm_rows)
        gain_rows = []
        for j, patient in enumerate(patients):
            row = {"patient": patient}
            for arm, values in dice.items():
                row[f"dice_{arm}"] = float(values[:, j].mean())
            row["gain"] = float(gain.per_patient[j])
            for control, summary in control_summaries.items():
                row[f"gain_vs_{control}"] = float(summary.per_patient[j])
            gain_rows.append(row)
        write_csv(out_dir / "gains.csv", gain_rows)

        figure = per_patient_plot(
            patients, dice["baseline"].mean(0), dice[self.modes[0]].mean(0),
            title=f"Dice per test patient (mean of {self.seeds} seeds); gain {gain.mean:+.3f} "
                  f"[{gain.ci_low:+.3f}, {gain.ci_high:+.3f}]",
        )
        save_png(out_dir / "per_patient_dice.png", figure)

        summary = {
            "metrics": {k: (v if np.isfinite(v) else None) for k, v in metrics.items()},  # valid JSON
            "moved_most": [{"patient": p, "gain": g} for p, g in movers(patients, gain.per_patient)],
            "segmenter": ctx.seg.to_dict(),
            "controls": list(self.controls),
            "modes": list(self.modes),
            "primary_mode": self.modes[0],
            "compute_control": self.compute_control,
            "baseline_converged": bool(metrics["converged_baseline"] == 1),
            "ci_covers": "U-Net seeds and test patients, for one training subset and one trained generator",
            "mde80": "smallest true gain this design detects with 80% power (two-sided, alpha 0.05), from the "
                     "measured seed, patient and residual variance of the gain",
        }
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))

        if ctx.writer is not None:  # scalars are logged by the core as eval/dice_gain/*
            ctx.writer.add_image("dice_gain/per_patient_dice", figure, ctx.step, dataformats="HWC")
            ctx.writer.flush()
