"""Metric validity: which cheap quality metric predicts a cell's Dice gain?

Dice gain is the expensive truth (many U-Nets per cell); FD, KID,
precision / recall / coverage, label fidelity, TSTR and memorisation are
cheap. For each metric, over cells (one generator training, at any budget,
usage mode or augmentation level), this module measures the rank agreement
with the gain: Kendall's tau and Spearman's rho, each with a percentile
bootstrap CI over cells (seeded, so reproducible), and the same over
generators (one row per generator: the mean over its cells) where there are
at least :data:`MIN_GENERATORS`. The sign is the raw correlation: a
lower-is-better metric that predicts the gain has a negative tau.

Cells come from run folders (:func:`collect_cells`): a benchmark folder
(``cells/*/results.json``) or a single run folder, one cell per run, or one
per (run, usage mode) with ``mode="all"``.

Cells of different usage modes, augmentation levels, regimes or ratios
(strata, :data:`STRATA`) are never ranked against each other: a mode or a
level moves every gain at once while the synthetic set, and so every metric,
stays the same, and pooled ranks would call that the metric's failure. Over
several strata the statistic is the stratified one (:func:`stratified_rank_correlation`):
each stratum's tau (rho) weighted by its pairs (points), a CI from a cluster
bootstrap over generator trainings (a training scored under three modes and
two levels is six cells but one draw of the data) and a p-value from
permuting gains within strata.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import itertools
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.io import atomic_write, read_json
from toolkit.rundir import RunDir

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

MIN_GENERATORS = 4
#: Fewest cells a rank correlation is computed over (in a stratum, over several).
MIN_CELLS = 3
#: Cell factors whose values must agree for two cells' gains to be ranked against each other.
STRATA = ("mode", "seg_augment", "n_train_patients", "ratio")
# Quality metrics read from every evaluator's values (shell patterns); their CIs, Ns and stds are not metrics.
METRIC_PATTERNS = ("label_fidelity_dice", "label_fidelity_slice_dice", "dice_tstr", "tstr_gap", "fid_inception",
                   "fd_*", "kid_*", "frd_*", "precision_*", "recall_*", "density_*", "coverage_*", "msssim_gap",
                   "msssim_abs_gap", "memorized_fraction_*", "near_train_fraction_*", "nn_dist_ratio_*")
NOT_METRICS = ("*_ci_low", "*_ci_high", "*_n_real", "*_n_synthetic", "*_std", "*_subset_size")


@dataclass
class Cell:
    """One scored generator training: its quality metrics and Dice gain.

    Attributes:
        name: the cell's (run folder's) name.
        generator: the generator's registered name.
        gain: the Dice gain (the primary usage mode's unless a mode was asked for).
        metrics: metric name -> value (finite values only).
        factors: what else tells cells apart (regime, mode, augmentation level, source folder, and the
            generator training it scores: cells of one training share ``training``).
    """

    name: str
    generator: str
    gain: float
    metrics: dict[str, float]
    factors: dict[str, Any] = field(default_factory=dict)


def is_metric(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in METRIC_PATTERNS) and \
        not any(fnmatch.fnmatch(name, p) for p in NOT_METRICS)


def _generator_name(run_dir: Path, results: dict[str, Any]) -> str:
    """The generator of a run: ``run.generator`` in its resolved config.yaml, else what results.json says."""
    return RunDir(run_dir).generator() or str(results.get("settings", {}).get("generator", run_dir.name))


def read_cell(run_dir: str | Path, mode: str | None = None) -> Cell | None:
    """The cell of one finished run folder, or None where it has no Dice gain (not scored by dice_gain).

    Args:
        run_dir: a run folder holding results.json (a benchmark cell or a ``cli.py run`` folder).
        mode: the usage mode whose gain is taken (``dice_gain_<mode>``); None: the primary one (``dice_gain``).
    """
    cells = read_cells(run_dir, mode)
    return cells[0] if cells else None


def read_cells(run_dir: str | Path, mode: str | None = None) -> list[Cell]:
    """The cells of one finished run folder: one (``mode`` None or a mode), or one per usage mode the run
    scored (``mode="all"``, the modes of its ``evaluators.dice_gain.modes``); [] without a Dice gain."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        return []
    results = read_json(path, f"Score it again: python cli.py evaluate --run {run_dir}")
    evaluation = results.get("evaluation", {})
    gains = evaluation.get("dice_gain", {}).get("values", {})
    metrics = {}
    for evaluator in evaluation.values():
        for name, value in evaluator.get("values", {}).items():
            if is_metric(name) and isinstance(value, (int, float)) and math.isfinite(value):
                metrics[name] = float(value)
    source = run_dir.parent.parent.name if run_dir.parent.name == "cells" else run_dir.parent.name
    trained = results.get("rescored_from") or run_dir.name
    factors = {"n_train_patients": _number(gains.get("n_train_patients")), "ratio": _number(gains.get("ratio")),
               "seg_augment": results.get("settings", {}).get("seg", {}).get("augment"), "source": source,
               # A budget dimension's cells continue one training: one cluster, like the levels re-scoring it.
               "training": f"{source}/{BUDGET_SUFFIX.sub('', trained)}"}
    modes: list[str | None] = [mode]
    if mode == "all":  # a run whose config names no modes (written before them) has its primary gain only
        modes = [*RunDir(run_dir).scored_modes()] or [None]
    generator, cells = _generator_name(run_dir, results), []
    for m in modes:
        gain = gains.get("dice_gain" if m is None else f"dice_gain_{m}")
        if isinstance(gain, (int, float)) and math.isfinite(gain):
            cells.append(Cell(run_dir.name, generator, float(gain), dict(metrics),
                              {**factors, "mode": m or "primary"}))
    return cells


#: A budget cell's name ends in its budget (``-t2400``, ``-b60s``); the training it continues has the same stem.
BUDGET_SUFFIX = re.compile(r"-(t\d+|b[\d.]+s)$")
#: The columns of a recorded ``validity_cells.csv`` that are factors, not metrics.
FACTORS = ("n_train_patients", "ratio", "seg_augment", "source", "training", "mode")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float, str)) and str(value) not in ("", "None") else None


def read_recorded_cells(path: str | Path) -> list[Cell]:
    """The cells of a recorded ``validity_cells.csv`` (what :func:`write_validity` wrote): cells whose runs are
    gone (a machine that kept no files) still pool with new ones in a validity table.

    Raises:
        ValueError: the file lacks the columns a validity table wrote, naming it.
    """
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in ("cell", "generator", "gain") if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path}: not a validity_cells.csv written by `leaderboard --validity` (missing columns: "
                         f"{', '.join(missing) or 'every row'}); name that file or a benchmark folder")
    cells = []
    for line, r in enumerate(rows, start=2):
        try:
            metrics = {k: float(v) for k, v in r.items() if is_metric(k) and v not in ("", None)
                       and math.isfinite(float(v))}
            factors = {k: r[k] or None for k in FACTORS if k in r}
            factors |= {k: _number(factors[k]) for k in ("n_train_patients", "ratio") if k in factors}
            cells.append(Cell(r["cell"], r["generator"], float(r["gain"]), metrics, factors))
        except (TypeError, ValueError) as exc:  # a value that is not a number: the file was edited or cut short
            raise ValueError(f"{path} line {line}: {exc}; write it again with `leaderboard --validity`") from None
    return cells


def collect_cells(folders: Iterable[str | Path], mode: str | None = None) -> list[Cell]:
    """Every scored cell in benchmark folders (their ``cells/*``), single run folders and recorded
    ``validity_cells.csv`` files (taken as recorded, whatever ``mode``), sorted by name.

    Raises:
        FileNotFoundError: a folder is neither a benchmark folder nor a run folder.
    """
    cells = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_file() and folder.suffix == ".csv":
            cells += read_recorded_cells(folder)
            continue
        if (folder / "cells").is_dir():
            runs = sorted(p for p in (folder / "cells").iterdir() if p.is_dir())
        elif (folder / "results.json").is_file():
            runs = [folder]
        else:
            raise FileNotFoundError(f"{folder} is neither a benchmark folder (with cells/) nor a run folder "
                                    "(with results.json)")
        cells += [c for r in runs for c in read_cells(r, mode)]
    return sorted(cells, key=lambda c: (c.factors.get("source", ""), c.name, str(c.factors.get("mode"))))


def _rank_stats(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(Kendall tau-b, Spearman rho); NaN where either side is constant."""
    from scipy import stats

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    return float(stats.kendalltau(x, y).statistic), float(stats.spearmanr(x, y).statistic)


def _rank_p_values(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values of Kendall's tau (scipy: exact for small samples without ties) and Spearman's rho
    (a permutation test).

    Why beside the bootstrap CI: over very few cells the percentile bootstrap degenerates (3 cells in the
    same order resample to tau = 1 every time, a CI of [1, 1]) while the exact test says what 3 points can
    show: a perfect order has p = 1/3 by chance.
    """
    from scipy import stats

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    return float(stats.kendalltau(x, y).pvalue), _spearman_permutation_p(x, y)


def _spearman_permutation_p(x: np.ndarray, y: np.ndarray, resamples: int = 4000, seed: int = 0) -> float:
    """Two-sided permutation p of Spearman's rho: exact over every pairing up to 7 points, else ``resamples``
    seeded shuffles. scipy's own p for rho is a t approximation that gives p = 0 for 3 points in order."""
    from scipy import stats

    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean()), (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())
    observed = abs(float(rx @ ry))
    if len(x) <= 7:
        orders = np.array(list(itertools.permutations(range(len(x)))))
        return float(np.mean(np.abs(ry[orders] @ rx) >= observed - 1e-12))
    orders = np.argsort(np.random.default_rng(seed).random((resamples, len(x))), axis=1)
    return float((np.sum(np.abs(ry[orders] @ rx) >= observed - 1e-12) + 1) / (resamples + 1))


def rank_correlation(x: Sequence[float], y: Sequence[float], samples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Kendall tau and Spearman rho of x vs y, with percentile bootstrap CIs over the pairs.

    Resamples pairs with replacement (``samples`` times, ``numpy`` PCG64 seeded
    by ``seed``); resamples where a side is constant give no value and are
    left out. Returns keys n, kendall_tau, kendall_ci_low/high, kendall_p, spearman_rho,
    spearman_ci_low/high, spearman_p (NaN below 3 pairs); a correlation counts as shown only where its
    CI excludes 0 *and* its p-value is below 1 - level.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"rank_correlation needs two equal-length 1-d sequences, got {x.shape} and {y.shape}")
    out = {"n": float(len(x)), "kendall_tau": float("nan"), "kendall_ci_low": float("nan"),
           "kendall_ci_high": float("nan"), "spearman_rho": float("nan"), "spearman_ci_low": float("nan"),
           "spearman_ci_high": float("nan"), "kendall_p": float("nan"), "spearman_p": float("nan")}
    if len(x) < 3:
        return out
    out["kendall_tau"], out["spearman_rho"] = _rank_stats(x, y)
    out["kendall_p"], out["spearman_p"] = _rank_p_values(x, y)
    rng = np.random.default_rng(seed)
    boot = np.array([_rank_stats(x[rows], y[rows]) for rows in rng.integers(0, len(x), (samples, len(x)))])
    alpha = (1 - level) / 2
    for column, name in ((0, "kendall"), (1, "spearman")):
        finite = boot[np.isfinite(boot[:, column]), column]
        if len(finite):
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (float(v) for v in np.quantile(finite, [alpha, 1 - alpha]))
    return out


def _tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b from the pairs' sign products (NaN where a side is constant): small n, no scipy call."""
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    denominator = math.sqrt(float((sx * sx).sum()) * float((sy * sy).sum()))
    return float((sx * sy).sum()) / denominator if denominator else float("nan")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    return (x[:, None] > x[None, :]).sum(1) + ((x[:, None] == x[None, :]).sum(1) + 1) / 2


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(np.linalg.norm(rx) * np.linalg.norm(ry))
    return float(rx @ ry) / denominator if denominator else float("nan")


def _pooled(x: np.ndarray, y: np.ndarray, groups: list[np.ndarray], minimum: int) -> tuple[float, float, int, int]:
    """(tau, rho, points, strata): each stratum's statistic weighted by its pairs (tau) or points (rho), over
    strata of at least ``minimum`` points where neither side is constant."""
    taus, rhos, pair_weights, point_weights = [], [], [], []
    for rows in groups:
        if len(rows) < minimum:
            continue
        tau = _tau_b(x[rows], y[rows])
        if not math.isfinite(tau):
            continue
        taus.append(tau)
        rhos.append(_rho(x[rows], y[rows]))
        pair_weights.append(len(rows) * (len(rows) - 1) / 2)
        point_weights.append(len(rows))
    if not taus:
        return float("nan"), float("nan"), 0, 0
    return (float(np.average(taus, weights=pair_weights)), float(np.average(rhos, weights=point_weights)),
            int(sum(point_weights)), len(taus))


def _groups(keys: Sequence[Any]) -> list[np.ndarray]:
    index: dict[Any, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        index[key].append(i)
    return [np.array(rows) for rows in index.values()]


def stratified_rank_correlation(x: Sequence[float], y: Sequence[float], strata: Sequence[Any],
                                clusters: Sequence[Any], samples: int = 2000, seed: int = 0, level: float = 0.95,
                                minimum: int = MIN_CELLS) -> dict[str, float]:
    """Kendall tau-b and Spearman rho of x vs y within strata, pooled; the keys of :func:`rank_correlation`
    plus ``strata`` (those used: at least ``minimum`` points, neither side constant).

    Why: points of different strata (usage modes, augmentation levels) share their metric values but not
    their gains' offset, so only within-stratum order says anything. The CI resamples ``clusters`` (the
    generator trainings behind the points) with replacement, since one training gives a point in every
    stratum; the p-value permutes y within each stratum (``samples`` seeded shuffles, two-sided) by one
    random order of the clusters shared by every stratum, so a training's replicas stay together (shuffling
    each stratum on its own would count them as independent evidence and give too small a p).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    strata, clusters = list(strata), list(clusters)
    if not (x.shape == y.shape == (len(strata),) == (len(clusters),)):
        raise ValueError(f"stratified_rank_correlation needs equal-length 1-d inputs, got {x.shape}, {y.shape}, "
                         f"{len(strata)} strata keys, {len(clusters)} cluster keys")
    nan = float("nan")
    out = {key: nan for key in ("kendall_tau", "kendall_ci_low", "kendall_ci_high", "spearman_rho",
                                "spearman_ci_low", "spearman_ci_high", "kendall_p", "spearman_p")}
    groups = _groups(strata)
    out["kendall_tau"], out["spearman_rho"], n, used = _pooled(x, y, groups, minimum)
    out["n"], out["strata"] = float(n), float(used)
    if not used:
        return out
    rng = np.random.default_rng(seed)
    members = _groups(clusters)
    cluster_index = np.empty(len(clusters), np.int64)
    for i, rows in enumerate(members):
        cluster_index[rows] = i
    boot, null = [], []
    for _ in range(samples):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        boot.append(_pooled(x[rows], y[rows], _groups([strata[i] for i in rows]), minimum)[:2])
        keys = rng.random(len(members))  # one random order of the trainings, the same in every stratum
        shuffled = y.copy()
        for g in groups:
            shuffled[g[np.argsort(cluster_index[g], kind="stable")]] = y[g[np.argsort(keys[cluster_index[g]],
                                                                                     kind="stable")]]
        null.append(_pooled(x, shuffled, groups, minimum)[:2])
    boot_array, null_array = np.array(boot), np.array(null)
    alpha = (1 - level) / 2
    for column, name, observed in ((0, "kendall", out["kendall_tau"]), (1, "spearman", out["spearman_rho"])):
        finite = boot_array[np.isfinite(boot_array[:, column]), column]
        if len(finite):
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (float(v) for v in np.quantile(finite, [alpha, 1 - alpha]))
        out[f"{name}_p"] = float((np.sum(np.abs(null_array[:, column]) >= abs(observed) - 1e-12) + 1) / (samples + 1))
    return out


def stratum(cell: Cell) -> tuple[Any, ...]:
    """The cell's stratum: the values of :data:`STRATA`."""
    return tuple(cell.factors.get(k) for k in STRATA)


def generator_means(cells: Sequence[Cell], metric: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per generator (sorted), the mean of ``metric`` and of the gain over its cells that have the metric."""
    groups: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        if metric in cell.metrics:
            groups[cell.generator].append(cell)
    names = sorted(groups)
    return (names, np.array([np.mean([c.metrics[metric] for c in groups[g]]) for g in names]),
            np.array([np.mean([c.gain for c in groups[g]]) for g in names]))


def metric_validity(cells: Sequence[Cell], metrics: Sequence[str] | None = None, samples: int = 2000,
                    seed: int = 0) -> list[dict[str, Any]]:
    """One row per metric: rank correlation with the gain over cells, and over generators (>= 4 of them).

    Cells of one stratum (:data:`STRATA`) give the plain statistic; cells of several, the stratified one
    (within strata, clustered by training) and ``strata``, the strata it used.

    Args:
        cells: the scored cells (:func:`collect_cells`).
        metrics: the metrics to rate; None: every metric some cell has.
        samples, seed: the bootstrap's resamples and seed.

    Returns:
        Rows with metric, cells, generators, the over-cells keys of
        :func:`rank_correlation` and the same prefixed ``gen_`` (NaN with
        ``gen_note`` "n/a: k generators" below :data:`MIN_GENERATORS`),
        sorted by |Kendall tau| over cells, largest first.
    """
    names = sorted({m for c in cells for m in c.metrics}) if metrics is None else list(metrics)
    rows = []
    for metric in names:
        having = [c for c in cells if metric in c.metrics]
        strata = [stratum(c) for c in having]
        row: dict[str, Any] = {"metric": metric, "cells": len(having), "strata": len(set(strata))}
        if len(set(strata)) > 1:
            rows.append(_stratified_row(row, having, metric, samples, seed))
            continue
        row.update(rank_correlation([c.metrics[metric] for c in having], [c.gain for c in having], samples, seed))
        del row["n"]
        generators, values, gains = generator_means(having, metric)
        row["generators"] = len(generators)
        per_gen = rank_correlation(values, gains, samples, seed)
        del per_gen["n"]
        enough = len(generators) >= MIN_GENERATORS
        row.update({f"gen_{k}": (v if enough else float("nan")) for k, v in per_gen.items()})
        row["gen_note"] = "" if enough else f"n/a: {len(generators)} generators"
        rows.append(row)
    rows.sort(key=lambda r: -abs(r["kendall_tau"]) if math.isfinite(r["kendall_tau"]) else 1.0)
    return rows


def _stratified_row(row: dict[str, Any], cells: Sequence[Cell], metric: str, samples: int,
                    seed: int) -> dict[str, Any]:
    """A validity row over several strata: cells within each stratum, clustered by training; generators as
    the mean per (stratum, generator), in strata with at least :data:`MIN_GENERATORS` of them."""
    pooled = stratified_rank_correlation([c.metrics[metric] for c in cells], [c.gain for c in cells],
                                         [stratum(c) for c in cells],
                                         [c.factors.get("training", c.name) for c in cells], samples, seed)
    row["cells"] = int(pooled.pop("n"))
    row["strata"] = int(pooled.pop("strata"))
    row.update(pooled)
    by_stratum: dict[tuple[Any, ...], list[Cell]] = defaultdict(list)
    for cell in cells:
        by_stratum[stratum(cell)].append(cell)
    keys, values, gains, names = [], [], [], []
    for key, group in by_stratum.items():
        generators, means, mean_gains = generator_means(group, metric)
        keys += [key] * len(generators)
        values += list(means)
        gains += list(mean_gains)
        names += generators
    row["generators"] = len(set(names))
    per_gen = stratified_rank_correlation(values, gains, keys, names, samples, seed, minimum=MIN_GENERATORS)
    per_gen.pop("n")
    enough = per_gen.pop("strata") > 0
    row.update({f"gen_{k}": (v if enough else float("nan")) for k, v in per_gen.items()})
    row["gen_note"] = "" if enough else f"n/a: fewer than {MIN_GENERATORS} generators in every stratum"
    return row


def shown(row: dict[str, Any], name: str, prefix: str = "", alpha: float = 0.05) -> bool:
    """The correlation ``name`` (kendall, spearman) is shown: its CI excludes 0 and its p-value is below alpha."""
    low, high, p = row[f"{prefix}{name}_ci_low"], row[f"{prefix}{name}_ci_high"], row.get(f"{prefix}{name}_p", 1.0)
    return math.isfinite(low) and (low > 0 or high < 0) and math.isfinite(p) and p < alpha


def _statistic(row: dict[str, Any], prefix: str, stat: str, name: str) -> str:
    """'+0.42 [+0.10, +0.70] p=0.01' (shown: CI excluding 0 and p < 0.05, marked *), or why there is no value."""
    value, low, high = row[f"{prefix}{stat}"], row[f"{prefix}{name}_ci_low"], row[f"{prefix}{name}_ci_high"]
    if not math.isfinite(value):
        return (row.get("gen_note") if prefix else "") or "n/a"
    if not math.isfinite(low):
        return f"{value:+.2f}"
    p = row.get(f"{prefix}{name}_p", float("nan"))
    text = f"{value:+.2f} [{low:+.2f}, {high:+.2f}]" + (f" p={p:.2g}" if math.isfinite(p) else "")
    return text + (" *" if shown(row, name, prefix) else "")


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The validity table as markdown: each statistic with its 95% bootstrap CI and its p-value; * marks one
    shown (a CI excluding 0 and p < 0.05). Over several strata, cells reads "N in K strata" (the stratified
    statistic of :func:`stratified_rank_correlation`)."""
    lines = ["| metric | cells | Kendall tau (cells) | Spearman rho (cells) | generators | Kendall tau (generators) "
             "| Spearman rho (generators) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = f"{r['cells']} in {r['strata']} strata" if r.get("strata", 1) > 1 else str(r["cells"])
        lines.append(f"| {r['metric']} | {cells} | {_statistic(r, '', 'kendall_tau', 'kendall')} | "
                     f"{_statistic(r, '', 'spearman_rho', 'spearman')} | {r['generators']} | "
                     f"{_statistic(r, 'gen_', 'kendall_tau', 'kendall')} | "
                     f"{_statistic(r, 'gen_', 'spearman_rho', 'spearman')} |")
    return "\n".join(lines) + "\n"


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def _strict(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_validity(out_dir: str | Path, rows: Sequence[dict[str, Any]], cells: Sequence[Cell]) -> list[Path]:
    """validity.md, validity.csv, validity.json (rows and cells, NaN as null) and validity_cells.csv (the points
    behind every scatter) in ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    points = [{"cell": c.name, "generator": c.generator, "gain": c.gain, **c.factors, **c.metrics} for c in cells]
    fields = list(dict.fromkeys(k for p in points for k in p))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=fields)
    writer.writeheader()
    writer.writerows(points)
    payload = {"rows": [{k: _strict(v) for k, v in r.items()} for r in rows],
               "cells": [{k: _strict(v) for k, v in p.items()} for p in points]}
    return [atomic_write(out_dir / "validity.md", format_markdown(rows)),
            atomic_write(out_dir / "validity.csv", _csv_text(rows)),
            atomic_write(out_dir / "validity.json", json.dumps(payload, indent=2) + "\n"),
            atomic_write(out_dir / "validity_cells.csv", table.getvalue())]


def scatter_images(rows: Sequence[dict[str, Any]], cells: Sequence[Cell]) -> dict[str, np.ndarray]:
    """One RGB scatter per metric (metric vs gain, a colour per generator, tau in the title), by metric."""
    from toolkit.seg.report import scatter_plot  # PIL-drawn, as the leaderboard's figures

    images = {}
    for row in rows:
        metric = row["metric"]
        points = [(c.generator, c.metrics[metric], c.gain) for c in cells if metric in c.metrics]
        if points:
            images[metric] = scatter_plot(points, f"{metric} vs Dice gain over {len(points)} cells: Kendall tau "
                                          f"{row['kendall_tau']:+.2f}", metric, "Dice gain")
    return images


def write_plots(out_dir: str | Path, rows: Sequence[dict[str, Any]], cells: Sequence[Cell]) -> list[Path]:
    """The scatters as ``validity_plots/<metric>.png`` in ``out_dir``; returns the paths."""
    from toolkit.seg.report import save_png

    paths = []
    for metric, image in scatter_images(rows, cells).items():
        path = Path(out_dir) / "validity_plots" / f"{metric}.png"
        save_png(path, image)
        paths.append(path)
    return paths


def log_tensorboard(writer: SummaryWriter, rows: Sequence[dict[str, Any]], cells: Sequence[Cell],
                    step: int = 0) -> None:
    """Each metric's statistics as scalars ``validity/<metric>/<stat>``, its scatter as an image, and the
    table as text."""
    stats = ("kendall_tau", "kendall_ci_low", "kendall_ci_high", "spearman_rho", "spearman_ci_low",
             "spearman_ci_high", "gen_kendall_tau", "gen_spearman_rho")
    for row in rows:
        for stat in stats:
            if math.isfinite(row[stat]):
                writer.add_scalar(f"validity/{row['metric']}/{stat}", row[stat], step)
    for metric, image in scatter_images(rows, cells).items():
        writer.add_image(f"validity/{metric}", image, step, dataformats="HWC")
    writer.add_text("validity/table", format_markdown(rows), step)
