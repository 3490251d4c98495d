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

from toolkit import validity
from toolkit.io import atomic_write, read_checked, read_json
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
                    ci_high=0.0, ci_includes_0=True, dice_augmented=_mean([r["dice_baseline"] for r in same]),
                    dice_baseline=_mean([r["dice_baseline"] for r in same]), draws=same[0]["draws"],
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
        row[column] = _mean([r.get("evaluation", {}).get(evaluator, {}).get("values", {}).get(metric)
                             for r in results])
    row["train_seconds"] = _mean([r.get("train", {}).get("total_seconds", r.get("train", {}).get("seconds"))
                                  for r in results])
    row["train_steps"] = results[0].get("train", {}).get("steps")
    # Steps actually done: fewer than train_steps where a wall-clock budget (train.max_seconds) stopped them.
    row["train_steps_done"] = _mean([r.get("train", {}).get("steps_done", r.get("train", {}).get("steps"))
                                     for r in results])
    row["train_max_seconds"] = results[0].get("train", {}).get("max_seconds")
    row["sample_seconds_per_100"] = _mean([r.get("synthetic", {}).get("seconds_per_100") for r in results])
    row["samples_per_second"] = 100 / row["sample_seconds_per_100"] \
        if row["sample_seconds_per_100"] > 0 else float("nan")
    config = (bench / "cells" / members[0].name / "config.yaml").read_text()
    row["config_hash"] = hashlib.sha1(config.encode()).hexdigest()[:10]
    fingerprints = {r.get("data", {}).get("fingerprint") for r in results}
    row["split_fingerprint"] = hashlib.sha1(json.dumps([sorted(fingerprints - {None}), patients])
                                            .encode()).hexdigest()[:10]
    values = [r.get("evaluation", {}).get("dice_gain", {}).get("values", {}) for r in results]
    row["dice_augmented"] = _mean([v.get(f"dice_{mode}", v.get("dice_augmented")) for v in values])
    row["baseline_converged"] = _mean([v.get("converged_baseline") for v in values])
    row["arm_converged"] = _mean([v.get(f"converged_{mode}") for v in values])
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


def budget_text(plan, train_steps: int | None) -> str:
    """How long every generator trained, in words, for the leaderboard's header."""
    budgets = getattr(plan, "budgets", ())
    unit = "s (train.max_seconds)" if plan.budget == "seconds" else "steps"
    if budgets:
        return (f"every generator trained to each of {', '.join(f'{b:g}' for b in budgets)} {unit}, nested (a "
                "longer budget continues the shorter one's checkpoint)")
    if plan.budget == "seconds":
        return f"every generator trained {getattr(plan, 'budget_seconds', 0) or 0:g} {unit}"
    return f"every generator trained {train_steps} steps"


def write_leaderboard(bench: Path, plan, cells: list, baselines_trained: int = 0) -> list[dict[str, Any]]:
    """leaderboard.md / .csv / .json, the plots (PNG in plots/, the same figures in TensorBoard) in the folder."""
    rows = aggregate(bench, cells)
    budget = getattr(plan, "budget", "steps")
    models = [r for r in rows if r["generator"] != BASELINE]  # the baseline row trains no generator
    train_steps = models[0]["train_steps"] if models else None
    meta = {"cells": len(cells), "draws": plan.draws, "seeds": plan.seeds, "train_steps": train_steps,
            "budget": budget, "budget_seconds": getattr(plan, "budget_seconds", None),
            "budget_text": budget_text(plan, train_steps),
            "baselines_trained": baselines_trained,
            "baseline_dice": {n: _mean([r["dice_baseline"] for r in rows if r["n_train_patients"] == n])
                              for n in plan.regimes},
            "kendall_tau": kendall_tau(rows), "git_commit": _git_commit()}
    meta["plots"] = write_plots(bench, rows, plan)
    tables = validity_tables(bench, cells)
    meta["validity"] = {level: {"cells": n, "folder": f"validity/{level}"} for level, (n, _) in tables.items()}
    atomic_write(bench / "leaderboard.md", format_markdown(rows, meta) + validity_markdown(tables))
    atomic_write(bench / "leaderboard.json", json.dumps({"meta": meta, "rows": rows}, indent=2, default=float))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(bench / "leaderboard.csv", table.getvalue())
    return rows


def validity_tables(bench: Path, cells: list) -> dict[str, tuple[int, str]]:
    """Which cheap metric predicts the gain, over this benchmark's scored cells: per segmenter augmentation level
    (one level's gains are comparable; another level moves every gain at once), where it has at least
    :data:`toolkit.validity.MIN_CELLS` cells. Writes ``validity/<level>/`` (table, points, scatters); returns
    level -> (cells, markdown table)."""
    names = {c.name for c in cells}
    scored = [c for c in validity.collect_cells([bench]) if c.name in names]
    tables = {}
    for level in sorted({str(c.factors.get("seg_augment")) for c in scored}):
        subset = [c for c in scored if str(c.factors.get("seg_augment")) == level]
        if len(subset) < validity.MIN_CELLS:
            continue
        rows = validity.metric_validity(subset)
        validity.write_validity(bench / "validity" / level, rows, subset)
        validity.write_plots(bench / "validity" / level, rows, subset)
        tables[level] = (len(subset), validity.format_markdown(rows))
    return tables


def validity_markdown(tables: dict[str, tuple[int, str]]) -> str:
    if not tables:
        return (f"\n## Which cheap metric predicts the gain\n\nFewer than {validity.MIN_CELLS} scored cells per "
                "augmentation level: no rank correlation (add draws, seeds or budgets).\n")
    parts = ["\n## Which cheap metric predicts the gain\n\nRank correlation of each quality metric with the primary "
             "mode's gain over this benchmark's cells (95% bootstrap CIs over cells and the rank test's p; * where the CI excludes 0 and p < 0.05; the "
             "sign is raw, so a lower-is-better metric that predicts the gain has a negative tau). Files, "
             "scatters: `validity/<level>/`; across benchmarks: `python cli.py leaderboard --validity FOLDERS`.\n"]
    for level, (n, table) in tables.items():
        parts.append(f"\n### seg.augment {level} ({n} cells)\n\n{table}")
    return "".join(parts)


#: What ``gain_vs_budget`` and its companions draw against the generator's budget: column -> (file stem, y label).
BUDGET_CURVES = {"dice_gain": ("gain_vs_budget", "Dice gain (95% CI)"),
                 "label_fidelity": ("label_fidelity_vs_budget", "label fidelity (Dice)"),
                 "fd_seg": ("fd_seg_vs_budget", "fd_seg (lower: closer to real)")}


def budget_figures(rows: list[dict[str, Any]], plan) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Per (regime, ratio): gain with its CI, label fidelity and fd_seg against the generator budget, one line
    per generator (the rows of each generator's primary mode at the first augmentation level)."""
    from toolkit.seg.report import line_plot

    unit = "training seconds" if plan.budget == "seconds" else "generator steps"
    figures = {}
    for regime in plan.regimes:
        for ratio in plan.ratios:
            subset = [r for r in rows if r["n_train_patients"] == regime and r["ratio"] == ratio and r.get("budget")]
            for column, (stem, y_label) in BUDGET_CURVES.items():
                series: dict[str, list] = defaultdict(list)
                for r in subset:
                    value = r.get(column)
                    if isinstance(value, (int, float)) and np.isfinite(value):
                        low, high = (r["ci_low"], r["ci_high"]) if column == "dice_gain" else (value, value)
                        series[r["generator"]].append((float(r["budget"]), float(value), low, high))
                if series:
                    figures[f"{stem}_n{regime}_r{ratio:g}.png"] = (
                        line_plot(dict(series), f"{y_label} vs {unit}, {regime} patients, ratio {ratio:g}", unit,
                                  y_label),
                        {"kind": stem, "n_train_patients": regime, "ratio": ratio, "series": sorted(series)})
    return figures


def write_plots(bench: Path, rows: list[dict[str, Any]], plan) -> dict[str, dict[str, Any]]:
    """The benchmark's figures as PNG in ``plots/`` and as TensorBoard images in the benchmark folder.

    Gain per generator with CIs (per regime and ratio); gain vs real training
    patients (several regimes) and gain vs ratio (several ratios), one line
    per generator with CI bars; FD (seg features) vs gain with Kendall's tau.
    Returns file name -> what it shows (kind, and the tau of a scatter).
    """
    from torch.utils.tensorboard import SummaryWriter

    from toolkit.seg.report import gain_plot, line_plot, save_png, scatter_plot

    every = [r for r in rows if r["generator"] != BASELINE]
    figures: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    arms = sorted({(r.get("seg_augment", ""), r.get("mode", "")) for r in every})
    if len(arms) > 1:  # gain by usage mode and augmentation level, per generator
        for regime in plan.regimes:
            for ratio in plan.ratios:
                subset = [{**r, "generator": f"{r['generator']} {r['mode']}/{r['seg_augment']}"} for r in every
                          if r["n_train_patients"] == regime and r["ratio"] == ratio]
                subset.sort(key=lambda r: r["generator"])
                if subset:
                    figures[f"gain_by_mode_n{regime}_r{ratio:g}.png"] = (
                        gain_plot(subset, f"Dice gain by usage mode / augmentation, {regime} patients, "
                                          f"ratio {ratio:g}"),
                        {"kind": "gain_by_mode", "n_train_patients": regime, "ratio": ratio,
                         "arms": [list(a) for a in arms]})
    # The other figures: each generator's primary mode at the first augmentation level (and its longest budget).
    first_level = plan.seg_augment[0] if getattr(plan, "seg_augment", ()) else None
    primary = [r for r in every if r.get("primary_mode", True) and first_level in (None, r.get("seg_augment"))]
    longest = max((r.get("budget", 0) for r in primary), default=0)
    models = [r for r in primary if r.get("budget", 0) == longest]
    if len(getattr(plan, "budgets", ())) > 1:
        figures.update(budget_figures(primary, plan))
    for regime in plan.regimes:
        for ratio in plan.ratios:
            subset = [r for r in models if r["n_train_patients"] == regime and r["ratio"] == ratio]
            if not subset:
                continue
            figures[f"gain_n{regime}_r{ratio:g}.png"] = (
                gain_plot(subset, f"Dice gain, {regime} training patients, ratio {ratio:g}"),
                {"kind": "gain", "n_train_patients": regime, "ratio": ratio})
            pairs = [(r["generator"], r["fd_seg"], r["dice_gain"]) for r in subset if np.isfinite(r["fd_seg"])]
            if pairs:
                tau = kendall_tau(subset)
                figures[f"fd_vs_gain_n{regime}_r{ratio:g}.png"] = (
                    scatter_plot(pairs, f"FD (seg features) vs Dice gain, {regime} patients, ratio {ratio:g}: "
                                 f"Kendall tau {tau:.2f}", "fd_seg (lower: closer to real)", "Dice gain"),
                    {"kind": "fd_vs_gain", "n_train_patients": regime, "ratio": ratio, "kendall_tau": tau,
                     "points": len(pairs)})

    def lines(fixed: str, value: float, along: str) -> dict[str, list[tuple[float, float, float, float]]]:
        series: dict[str, list] = defaultdict(list)
        for r in models:
            if r[fixed] == value:
                series[r["generator"]].append((float(r[along]), r["dice_gain"], r["ci_low"], r["ci_high"]))
        return dict(series)

    if len(plan.regimes) > 1:
        for ratio in plan.ratios:
            series = lines("ratio", ratio, "n_train_patients")
            figures[f"gain_vs_patients_r{ratio:g}.png"] = (
                line_plot(series, f"Dice gain (95% CI) vs real training patients, ratio {ratio:g}",
                          "real training patients"), {"kind": "gain_vs_patients", "ratio": ratio,
                                                      "series": sorted(series)})
    if len(plan.ratios) > 1:
        for regime in plan.regimes:
            series = lines("n_train_patients", regime, "ratio")
            figures[f"gain_vs_ratio_n{regime}.png"] = (
                line_plot(series, f"Dice gain (95% CI) vs synthetic:real ratio, {regime} training patients",
                          "synthetic:real ratio"), {"kind": "gain_vs_ratio", "n_train_patients": regime,
                                                    "series": sorted(series)})
    for old in (bench / "tensorboard").glob("events.out.tfevents.*"):
        old.unlink()  # one set of figures: the leaderboard's latest
    writer = SummaryWriter(log_dir=str(bench / "tensorboard"))
    try:
        for file, (image, _) in figures.items():
            save_png(bench / "plots" / file, image)
            writer.add_image(f"benchmark/{file[:-4]}", image, 0, dataformats="HWC")
    finally:
        writer.close()
    return {file: info for file, (_, info) in figures.items()}
