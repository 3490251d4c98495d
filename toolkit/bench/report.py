"""What a benchmark writes: leaderboard.md / .csv / .json, its plots and its metric-validity section.

The numbers come from :mod:`toolkit.bench.leaderboard` (rows, bootstrap, power); this module lays them
out: the tables, the figures (PNG in ``plots/``, the same in TensorBoard) and, per segmenter
augmentation level, which cheap metric predicts the gain (:mod:`toolkit.validity`).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import validity
from toolkit.bench.leaderboard import BASELINE, aggregate, format_markdown, git_commit, kendall_tau, mean_of
from toolkit.io import atomic_write


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
            "baseline_dice": {n: mean_of([r["dice_baseline"] for r in rows if r["n_train_patients"] == n])
                              for n in plan.regimes},
            "kendall_tau": kendall_tau(rows), "git_commit": git_commit()}
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
    (one level's gains are comparable; another level moves every gain at once), each usage mode's gain ranked
    within its mode (the stratified statistic), where a level has at least :data:`toolkit.validity.MIN_CELLS`
    cells. Writes ``validity/<level>/`` (table, points, scatters); returns level -> (cells, markdown table)."""
    names = {c.name for c in cells}
    scored = [c for c in validity.collect_cells([bench], mode="all") if c.name in names]
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
    parts = ["\n## Which cheap metric predicts the gain\n\nRank correlation of each quality metric with the gain over "
             "this benchmark's cells, one per (generator training, usage mode), ranked within each mode (95% "
             "bootstrap CIs over trainings and the rank test's p; * where the CI excludes 0 and p < 0.05; the "
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
