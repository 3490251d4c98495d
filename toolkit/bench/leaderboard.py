"""The benchmark leaderboard: gains over draws, seeds and test patients, with the power to tell them apart.

Per (generator, regime, ratio) the cells give a complete array of paired
differences ``augmented - baseline`` [draws, generator seeds, U-Net seeds,
test patients]. Which patients are in a small training set moves Dice more
than the seed does, so the 95% CI comes from a hierarchical bootstrap:
draws resampled, generator seeds within each drawn draw, U-Net seeds within
each of those, and test patients (crossed with all of them: the same test
set serves every cell). The minimum detectable effect at 80% power is
``(z_0.975 + z_0.8)`` times that bootstrap's standard error: the smallest true
gain this design would find. Gains whose CI includes 0 are marked.

Rows: one per generator and (regime, ratio), the real-only baseline, and the
``deformed_real`` control (it is a registered generator, so it is ranked like
one). Kendall's tau between the quality ranking (FD on the seg features) and
the utility ranking (gain) says whether image quality predicts usefulness.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from collections import defaultdict
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from toolkit.io import read_checked, read_json
from toolkit.rundir import RunDir, RunError
from toolkit.seg.stats import variance_components, wilcoxon_p

BASELINE = "(real only: baseline)"
Z80 = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
QUALITY = {  # leaderboard column -> (evaluator, metric)
    "label_fidelity": ("dice_gain", "label_fidelity_dice"), "dice_augmented": ("dice_gain", "dice_augmented"),
    "dice_baseline": ("dice_gain", "dice_baseline"), "dice_tstr": ("dice_gain", "dice_tstr"),
    "fd_seg": ("fd", "fd_seg"), "kid_seg": ("fd", "kid_seg"), "precision_seg": ("prdc", "precision_seg"),
    "recall_seg": ("prdc", "recall_seg"), "coverage_seg": ("prdc", "coverage_seg"),
    "msssim_gap": ("diversity", "msssim_gap"), "memorized_fraction": ("memorization", "memorized_fraction_pixel"),
}


def primary_arm(run_dir: Path) -> str:
    """The arm a cell's gain is measured on: its primary usage mode (cells scored before modes: augmented)."""
    summary = run_dir / "dice_gain" / "summary.json"
    if summary.is_file():
        return read_json(summary, rescore_fix(run_dir), RunError).get("primary_mode", "augmented")
    return "augmented"


def cell_modes(run_dir: Path) -> list[str]:
    """The usage modes a cell was scored under, primary first (cells scored before modes: augmented)."""
    summary = run_dir / "dice_gain" / "summary.json"
    modes = read_json(summary, rescore_fix(run_dir), RunError).get("modes") if summary.is_file() else None
    return list(modes) if modes else [primary_arm(run_dir)]


def per_patient_diffs(run_dir: Path, arm: str | None = None) -> tuple[list[str], np.ndarray]:
    """Test patients and the [U-Net seeds, patients] Dice differences ``arm`` (default: the primary
    mode) - baseline of one cell."""
    arm = arm or primary_arm(run_dir)

    def parse(path: Path) -> tuple[list[str], np.ndarray]:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError("no rows")
        patients = sorted({r["patient"] for r in rows})
        seeds = sorted({int(r["seed"]) for r in rows})
        dice = {(r["arm"], int(r["seed"]), r["patient"]): float(r["dice"]) for r in rows}
        missing = [(a, s, p) for a in (arm, "baseline") for s in seeds for p in patients if (a, s, p) not in dice]
        if missing:
            raise KeyError(f"rows missing, e.g. arm {missing[0][0]!r} seed {missing[0][1]} patient {missing[0][2]!r}")
        return patients, np.array([[dice[(arm, s, p)] - dice[("baseline", s, p)] for p in patients] for s in seeds])

    return read_checked(run_dir / "dice_gain" / "per_patient.csv", parse, rescore_fix(run_dir), RunError)


def rescore_fix(run_dir: Path) -> str:
    """What to do about a cell's damaged dice_gain file: score its synthetic set again (no training)."""
    return f"Score it again: python cli.py evaluate --run {run_dir} --evaluators dice_gain"


def hierarchical_bootstrap(diff: np.ndarray, samples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(CI low, CI high, standard error) of the mean of ``diff`` [draws, gen seeds, U-Net seeds, patients]."""
    d, g, s, p = diff.shape
    rng = np.random.default_rng(seed)
    i_d = rng.integers(d, size=(samples, d))
    i_g = rng.integers(g, size=(samples, d, g))
    i_s = rng.integers(s, size=(samples, d, g, s))
    i_p = rng.integers(p, size=(samples, p))
    picked = diff[i_d[:, :, None, None], i_g[:, :, :, None], i_s]  # [B, d, g, s, P]
    means = np.take_along_axis(picked, i_p[:, None, None, None, :], axis=-1).mean(axis=(1, 2, 3, 4))
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high), float(means.std(ddof=1))


#: The levels of a benchmark's paired differences, outermost first.
COMPONENTS = ("var_draw", "var_gen_seed", "var_unet_seed", "var_patient", "var_residual")


def nested_components(diff: np.ndarray) -> dict[str, float]:
    """Method-of-moments variance components of ``diff`` [draws, gen seeds, U-Net seeds, patients].

    Model: ``d = mu + draw + gen seed (in draw) + U-Net seed (in cell) +
    patient + residual``. Patient and residual come from the two-way
    estimate of ``toolkit.seg.stats.variance_components`` over the
    (draw, seed, U-Net seed) rows; each nested level from the spread of its
    means minus what the levels below it contribute, clipped at 0. A level
    with one member cannot be estimated: NaN (and so are the levels above
    that need it).
    """
    d, g, u, p = diff.shape
    out = dict.fromkeys(COMPONENTS, float("nan"))
    rows = diff.reshape(d * g * u, p)
    if rows.shape[0] > 1 and p > 1:
        two_way = variance_components(rows)
        out["var_patient"], out["var_residual"] = two_way.var_patient, two_way.var_residual
    else:
        return out
    noise = out["var_residual"] / p  # what the residual adds to a row mean
    means = diff.mean(axis=3)  # [D, G, U]
    if u > 1:
        out["var_unet_seed"] = max(float(means.var(axis=2, ddof=1).mean()) - noise, 0.0)
    below = (out["var_unet_seed"] + noise) / u  # the variance of a cell mean from inside the cell
    cells = means.mean(axis=2)  # [D, G]
    if g > 1:
        out["var_gen_seed"] = max(float(cells.var(axis=1, ddof=1).mean()) - below, 0.0)
    if d > 1:
        out["var_draw"] = max(float(cells.mean(axis=1).var(ddof=1)) - (out["var_gen_seed"] + below) / g, 0.0)
    return out


def group_diffs(bench: Path, cells: list) -> dict[tuple, np.ndarray]:
    """(generator, regime, ratio, level, budget) -> the [draws, gen seeds, U-Net seeds, patients] differences of
    its finished cells (primary mode)."""
    groups: dict[tuple, list] = defaultdict(list)
    for cell in cells:
        groups[(cell.generator, cell.n_train, cell.ratio, cell.augment, cell.budget)].append(cell)
    out = {}
    for key, members in groups.items():
        by_cell = {(c.draw, c.seed): per_patient_diffs(bench / "cells" / c.name)[1] for c in members}
        draws, seeds = sorted({k[0] for k in by_cell}), sorted({k[1] for k in by_cell})
        if len(by_cell) == len(draws) * len(seeds):  # a complete layout only
            out[key] = np.stack([np.stack([by_cell[(dr, s)] for s in seeds]) for dr in draws])
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def mean_of(values: list[float | None]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def aggregate(bench: Path, cells: list) -> list[dict[str, Any]]:
    """One leaderboard row per (generator, regime, ratio, augmentation level, usage mode, generator budget),
    ranked by mean gain within each (regime, ratio, level, mode, budget)."""
    groups: dict[tuple, list] = defaultdict(list)
    for cell in cells:
        groups[(cell.generator, cell.n_train, cell.ratio, cell.augment, cell.budget)].append(cell)
    rows = []
    for (generator, n_train, ratio, augment, budget), members in groups.items():
        modes = cell_modes(bench / "cells" / members[0].name)
        for mode in modes:
            rows.append({**_group_row(bench, generator, n_train, ratio, augment, mode, members),
                         "budget": float(budget), "primary_mode": mode == modes[0]})
    # The real-only baseline of each (regime, ratio, level, mode), as the row every gain is measured from.
    for key in sorted({(r["n_train_patients"], r["ratio"], r["seg_augment"], r["mode"]) for r in rows}):
        same = [r for r in rows if (r["n_train_patients"], r["ratio"], r["seg_augment"], r["mode"]) == key]
        base = {k: float("nan") for k in same[0]}
        base.update(generator=BASELINE, n_train_patients=key[0], ratio=key[1], seg_augment=key[2], mode=key[3],
                    dice_gain=0.0, ci_low=0.0,
                    ci_high=0.0, ci_includes_0=True, dice_augmented=mean_of([r["dice_baseline"] for r in same]),
                    dice_baseline=mean_of([r["dice_baseline"] for r in same]), draws=same[0]["draws"],
                    seeds=same[0]["seeds"], unet_seeds=same[0]["unet_seeds"], test_patients=same[0]["test_patients"],
                    train_seconds=0.0, train_steps=None, train_steps_done=float("nan"), train_max_seconds=None,
                    config_hash="", split_fingerprint=same[0]["split_fingerprint"], budget=0.0, primary_mode=True)
        rows.append(base)
    rows.sort(key=lambda r: (r["n_train_patients"], r["ratio"], r["seg_augment"], r["mode"], r["budget"],
                             -r["dice_gain"]))
    return rows


def _group_row(bench: Path, generator: str, n_train: int, ratio: float, augment: str, mode: str,
               members: list) -> dict[str, Any]:
    """The leaderboard row of one generator's cells under one augmentation level and usage mode."""
    draws, seeds = sorted({c.draw for c in members}), sorted({c.seed for c in members})
    by_cell, results, patients = {}, [], None
    for c in members:
        run_dir = bench / "cells" / c.name
        patients, by_cell[(c.draw, c.seed)] = per_patient_diffs(run_dir, mode)
        results.append(RunDir(run_dir).read_results())
    diff = np.stack([np.stack([by_cell[(d, s)] for s in seeds]) for d in draws])  # [D, G, S, P]
    low, high, se = hierarchical_bootstrap(diff)
    row = {"generator": generator, "n_train_patients": n_train, "ratio": ratio,
           "seg_augment": augment or results[0].get("settings", {}).get("seg", {}).get("augment", ""),
           "mode": mode,
           "dice_gain": float(diff.mean()), "ci_low": low, "ci_high": high, "ci_includes_0": low <= 0 <= high,
           "p_wilcoxon": wilcoxon_p(diff.mean(axis=(0, 1, 2))), "mde80": Z80 * se,
           "draws": len(draws), "seeds": len(seeds), "unet_seeds": diff.shape[2], "test_patients": len(patients)}
    for column, (evaluator, metric) in QUALITY.items():
        row[column] = mean_of([r.get("evaluation", {}).get(evaluator, {}).get("values", {}).get(metric)
                             for r in results])
    row["train_seconds"] = mean_of([r.get("train", {}).get("total_seconds", r.get("train", {}).get("seconds"))
                                  for r in results])
    row["train_steps"] = results[0].get("train", {}).get("steps")
    # Steps actually done: fewer than train_steps where a wall-clock budget (train.max_seconds) stopped them.
    row["train_steps_done"] = mean_of([r.get("train", {}).get("steps_done", r.get("train", {}).get("steps"))
                                     for r in results])
    row["train_max_seconds"] = results[0].get("train", {}).get("max_seconds")
    row["sample_seconds_per_100"] = mean_of([r.get("synthetic", {}).get("seconds_per_100") for r in results])
    row["samples_per_second"] = 100 / row["sample_seconds_per_100"] \
        if row["sample_seconds_per_100"] > 0 else float("nan")
    config = (bench / "cells" / members[0].name / "config.yaml").read_text()
    row["config_hash"] = hashlib.sha1(config.encode()).hexdigest()[:10]
    fingerprints = {r.get("data", {}).get("fingerprint") for r in results}
    row["split_fingerprint"] = hashlib.sha1(json.dumps([sorted(fingerprints - {None}), patients])
                                            .encode()).hexdigest()[:10]
    values = [r.get("evaluation", {}).get("dice_gain", {}).get("values", {}) for r in results]
    row["dice_augmented"] = mean_of([v.get(f"dice_{mode}", v.get("dice_augmented")) for v in values])
    row["baseline_converged"] = mean_of([v.get("converged_baseline") for v in values])
    row["arm_converged"] = mean_of([v.get(f"converged_{mode}") for v in values])
    return row


def kendall_tau(rows: list[dict[str, Any]]) -> float:
    """Rank agreement of quality (lower FD better) and utility (higher gain better) over the rows (NaN under 3)."""
    pairs = [(r["fd_seg"], r["dice_gain"]) for r in rows if r["generator"] != BASELINE and np.isfinite(r["fd_seg"])]
    if len(pairs) < 3:
        return float("nan")
    from scipy import stats

    fd, gain = zip(*pairs)
    return float(stats.kendalltau(-np.asarray(fd), np.asarray(gain)).statistic)


def format_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cols = ["generator", "n_train_patients", "ratio", "seg_augment", "mode", "dice_gain", "95% CI", "mde80",
            "p_wilcoxon", "dice_augmented", "dice_tstr", "label_fidelity", "fd_seg", "kid_seg", "precision_seg",
            "recall_seg", "coverage_seg", "msssim_gap", "memorized_fraction", "baseline_converged"]
    timing = ["train_seconds", "train_steps_done", "samples_per_second"]
    budgets = any(r.get("budget") for r in rows)  # a budget dimension: one row per generator budget
    header = [*cols[:5], *(["budget"] if budgets else []), *cols[5:], "train s", "steps done", "samples/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        mark = " (CI includes 0)" if r["ci_includes_0"] and r["generator"] != BASELINE else ""
        cells = [r["generator"], str(r["n_train_patients"]), f"{r['ratio']:g}", str(r.get("seg_augment", "")),
                 str(r.get("mode", ""))]
        cells += [f"{r['budget']:g}" if r.get("budget") else "-"] if budgets else []
        cells += [f"{r['dice_gain']:+.3f}{mark}", f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"]
        cells += [f"{r[c]:.3f}" if isinstance(r.get(c), float) and np.isfinite(r[c]) else "-" for c in cols[7:]]
        cells += [f"{r[c]:.0f}" if isinstance(r[c], (int, float)) and np.isfinite(r[c]) and r["generator"] != BASELINE
                  else "-" for c in timing]
        lines.append("| " + " | ".join(cells) + " |")
    baselines = ", ".join(f"{n} patients: {d:.3f}" for n, d in meta["baseline_dice"].items())
    return (f"# Benchmark leaderboard\n\n{meta['cells']} cells: generators x regimes x ratios x {meta['draws']} "
            f"draws x {meta['seeds']} generator seeds; {meta['budget_text']}. "
            f"Real-only baseline Dice: {baselines}. Baselines trained by this benchmark: "
            f"{meta['baselines_trained']}. Gains are augmented - baseline, 95% CI from a hierarchical bootstrap "
            "over draws, generator seeds, U-Net seeds and test patients; mde80: the smallest true gain this design "
            f"detects with 80% power; msssim_gap is the diversity metric. Kendall tau (FD vs gain ranking): "
            f"{meta['kendall_tau']:.2f}. baseline_converged: share of the baseline U-Nets whose val Dice no longer "
            "rose over the last quarter of seg.steps (below 1: gains against an under-trained segmenter). "
            f"git {meta['git_commit']}.\n\n" + "\n".join(lines) + "\n")
