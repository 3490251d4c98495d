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
import io
import json
import subprocess
from collections import defaultdict
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from toolkit.io import atomic_write
from toolkit.rundir import RunDir
from toolkit.seg.stats import wilcoxon_p

BASELINE = "(real only: baseline)"
Z80 = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
QUALITY = {  # leaderboard column -> (evaluator, metric)
    "label_fidelity": ("dice_gain", "label_fidelity_dice"), "dice_augmented": ("dice_gain", "dice_augmented"),
    "dice_baseline": ("dice_gain", "dice_baseline"), "dice_tstr": ("dice_gain", "dice_tstr"),
    "fd_seg": ("fd", "fd_seg"), "kid_seg": ("fd", "kid_seg"), "precision_seg": ("prdc", "precision_seg"),
    "recall_seg": ("prdc", "recall_seg"), "coverage_seg": ("prdc", "coverage_seg"),
    "msssim_gap": ("diversity", "msssim_gap"), "memorized_fraction": ("memorization", "memorized_fraction_pixel"),
}


def per_patient_diffs(run_dir: Path) -> tuple[list[str], np.ndarray]:
    """Test patients and the [U-Net seeds, patients] Dice differences augmented - baseline of one cell."""
    with open(run_dir / "dice_gain" / "per_patient.csv") as f:
        rows = list(csv.DictReader(f))
    patients = sorted({r["patient"] for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    dice = {(r["arm"], int(r["seed"]), r["patient"]): float(r["dice"]) for r in rows}
    diff = np.array([[dice[("augmented", s, p)] - dice[("baseline", s, p)] for p in patients] for s in seeds])
    return patients, diff


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


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def aggregate(bench: Path, cells: list) -> list[dict[str, Any]]:
    """One leaderboard row per (generator, regime, ratio), ranked by mean gain within each regime and ratio."""
    groups: dict[tuple, list] = defaultdict(list)
    for cell in cells:
        groups[(cell.generator, cell.n_train, cell.ratio)].append(cell)
    rows = []
    for (generator, n_train, ratio), members in groups.items():
        draws, seeds = sorted({c.draw for c in members}), sorted({c.seed for c in members})
        by_cell, results, patients = {}, [], None
        for c in members:
            run_dir = bench / "cells" / c.name
            patients, by_cell[(c.draw, c.seed)] = per_patient_diffs(run_dir)
            results.append(RunDir(run_dir).read_results())
        diff = np.stack([np.stack([by_cell[(d, s)] for s in seeds]) for d in draws])  # [D, G, S, P]
        low, high, se = hierarchical_bootstrap(diff)
        row = {"generator": generator, "n_train_patients": n_train, "ratio": ratio,
               "dice_gain": float(diff.mean()), "ci_low": low, "ci_high": high, "ci_includes_0": low <= 0 <= high,
               "p_wilcoxon": wilcoxon_p(diff.mean(axis=(0, 1, 2))), "mde80": Z80 * se,
               "draws": len(draws), "seeds": len(seeds), "unet_seeds": diff.shape[2], "test_patients": len(patients)}
        for column, (evaluator, metric) in QUALITY.items():
            row[column] = _mean([r.get("evaluation", {}).get(evaluator, {}).get("values", {}).get(metric)
                                 for r in results])
        row["train_seconds"] = _mean([r.get("train", {}).get("seconds") for r in results])
        row["train_steps"] = results[0].get("train", {}).get("steps")
        row["sample_seconds_per_100"] = _mean([r.get("synthetic", {}).get("seconds_per_100") for r in results])
        config = (bench / "cells" / members[0].name / "config.yaml").read_text()
        row["config_hash"] = hashlib.sha1(config.encode()).hexdigest()[:10]
        fingerprints = {r.get("data", {}).get("fingerprint") for r in results}
        row["split_fingerprint"] = hashlib.sha1(json.dumps([sorted(fingerprints - {None}), patients])
                                                .encode()).hexdigest()[:10]
        rows.append(row)
    # The real-only baseline of each (regime, ratio), as the row every gain is measured from.
    for n_train, ratio in sorted({(r["n_train_patients"], r["ratio"]) for r in rows}):
        same = [r for r in rows if (r["n_train_patients"], r["ratio"]) == (n_train, ratio)]
        base = {k: float("nan") for k in same[0]}
        base.update(generator=BASELINE, n_train_patients=n_train, ratio=ratio, dice_gain=0.0, ci_low=0.0,
                    ci_high=0.0, ci_includes_0=True, dice_augmented=_mean([r["dice_baseline"] for r in same]),
                    dice_baseline=_mean([r["dice_baseline"] for r in same]), draws=same[0]["draws"],
                    seeds=same[0]["seeds"], unet_seeds=same[0]["unet_seeds"], test_patients=same[0]["test_patients"],
                    train_seconds=0.0, config_hash="", split_fingerprint=same[0]["split_fingerprint"])
        rows.append(base)
    rows.sort(key=lambda r: (r["n_train_patients"], r["ratio"], -r["dice_gain"]))
    return rows


def kendall_tau(rows: list[dict[str, Any]]) -> float:
    """Rank agreement of quality (lower FD better) and utility (higher gain better) over the rows."""
    pairs = [(r["fd_seg"], r["dice_gain"]) for r in rows if r["generator"] != BASELINE and np.isfinite(r["fd_seg"])]
    if len(pairs) < 3:
        return float("nan")
    from scipy import stats

    fd, gain = zip(*pairs)
    return float(stats.kendalltau(-np.asarray(fd), np.asarray(gain)).statistic)


def format_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cols = ["generator", "n_train_patients", "ratio", "dice_gain", "95% CI", "mde80", "p_wilcoxon",
            "dice_augmented", "dice_tstr", "label_fidelity", "fd_seg", "kid_seg", "coverage_seg",
            "memorized_fraction", "train_seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        mark = " (CI includes 0)" if r["ci_includes_0"] and r["generator"] != BASELINE else ""
        cells = [r["generator"], str(r["n_train_patients"]), f"{r['ratio']:g}", f"{r['dice_gain']:+.3f}{mark}",
                 f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"]
        cells += [f"{r[c]:.3f}" if isinstance(r[c], float) and np.isfinite(r[c]) else "-" for c in cols[5:-1]]
        cells.append(f"{r['train_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    baselines = ", ".join(f"{n} patients: {d:.3f}" for n, d in meta["baseline_dice"].items())
    return (f"# Benchmark leaderboard\n\n{meta['cells']} cells: generators x regimes x ratios x {meta['draws']} "
            f"draws x {meta['seeds']} generator seeds; every generator trained {meta['train_steps']} steps. "
            f"Real-only baseline Dice: {baselines}. Baselines trained by this benchmark: "
            f"{meta['baselines_trained']}. Gains are augmented - baseline, 95% CI from a hierarchical bootstrap "
            "over draws, generator seeds, U-Net seeds and test patients; mde80: the smallest true gain this design "
            f"detects with 80% power. Kendall tau (FD vs gain ranking): {meta['kendall_tau']:.2f}. "
            f"git {meta['git_commit']}.\n\n" + "\n".join(lines) + "\n")


def write_leaderboard(bench: Path, plan, cells: list, baselines_trained: int = 0) -> list[dict[str, Any]]:
    """leaderboard.md / .csv / .json and the gain plot in the benchmark folder."""
    from toolkit.seg.report import gain_plot, save_png

    rows = aggregate(bench, cells)
    meta = {"cells": len(cells), "draws": plan.draws, "seeds": plan.seeds,
            "train_steps": rows[0]["train_steps"] if rows else None, "baselines_trained": baselines_trained,
            "baseline_dice": {n: _mean([r["dice_baseline"] for r in rows if r["n_train_patients"] == n])
                              for n in plan.regimes},
            "kendall_tau": kendall_tau(rows), "git_commit": _git_commit()}
    atomic_write(bench / "leaderboard.md", format_markdown(rows, meta))
    atomic_write(bench / "leaderboard.json", json.dumps({"meta": meta, "rows": rows}, indent=2, default=float))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(bench / "leaderboard.csv", table.getvalue())
    for regime in plan.regimes:
        for ratio in plan.ratios:
            subset = [r for r in rows if r["n_train_patients"] == regime and r["ratio"] == ratio
                      and r["generator"] != BASELINE]
            if subset:
                save_png(bench / "plots" / f"gain_n{regime}_r{ratio:g}.png",
                         gain_plot(subset, f"Dice gain, {regime} training patients, ratio {ratio:g}"))
    return rows
