"""``benchmark --plan``: how many draws x seeds a target effect needs, and how long that takes.

Variance components come from a finished benchmark or runs (``--from``), else
from the recorded defaults shipped beside this module; times from finished
cells, else from a short timing of each generator and one segmenter here.
Nothing is trained.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.bench.cells import is_finished
from toolkit.bench.leaderboard import COMPONENTS, group_diffs, nested_components, per_patient_diffs
from toolkit.bench.plan import PLAN_FIX, Cell, Plan, cell_config, plan_fields
from toolkit.config import Config
from toolkit.experiment import baseline_store, build_evaluators, build_generator, prepare_data, train_context
from toolkit.io import read_json
from toolkit.registry import GENERATORS
from toolkit.rundir import RunDir, RunError
from toolkit.runtime import machine_threads, resolve_device, set_threads
from toolkit.seg.stats import Power
from toolkit.seg.train import Pool, train_unet
from toolkit.train.loop import batch_indices
from toolkit.types import Batch

#: The recorded variance components --plan assumes without --from (package data: a wheel ships it).
DEFAULTS_FILE = Path(__file__).resolve().parent / "variance_defaults.json"


PLAN_DRAWS = (1, 2, 3, 4, 6, 8, 12)


PLAN_SEEDS = (1, 2, 3)


def default_components() -> tuple[dict[str, float], dict[str, str]]:
    """The documented default variance components and, per component, where each comes from."""
    data = json.loads(DEFAULTS_FILE.read_text())
    values, sources = {}, {}
    for part in ("measured", "assumed"):
        for key, value in data[part].items():
            if key != "source":
                values[key] = float(value)
                sources[key] = f"default ({part}, toolkit/bench/{DEFAULTS_FILE.name})"
    return values, sources


def default_notes() -> dict[str, str]:
    data = json.loads(DEFAULTS_FILE.read_text())
    return {part: data[part]["source"] for part in ("measured", "assumed")}


def design_mde(components: dict[str, float], draws: int, seeds: int, unet_seeds: int, patients: int) -> float:
    """MDE at 80% power of a benchmark row's mean gain for a design, with ``toolkit.seg.stats.Power``.

    The mean over [draws, gen seeds, U-Net seeds, patients] has variance
    ``var_draw / D + var_gen_seed / (D G) + var_unet_seed / (D G U) +
    var_patient / P + var_residual / (D G U P)``: the two-way formula of
    ``Power`` with draws as its "seeds" and the within-draw levels folded in.
    """

    within = seeds * unet_seeds
    c = components
    return Power(var_seed=c["var_draw"] + c["var_gen_seed"] / seeds + c["var_unet_seed"] / within,
                 var_patient=c["var_patient"], var_residual=c["var_residual"] / within,
                 n_seeds=draws, n_patients=patients).mde()


def measured_components(path: str | Path) -> tuple[dict[str, float], str]:
    """Variance components measured in a benchmark folder's finished cells, or in a run / folder of runs.

    Components that cannot be measured there (one draw, one seed) are NaN.
    """

    path = Path(path)
    estimates = []
    if (path / "benchmark.json").is_file():
        saved = read_json(path / "benchmark.json", PLAN_FIX, RunError, check=lambda v: v["plan"])
        cells = [c for c in Plan(**plan_fields(saved)).cells()
                 if is_finished(path / "cells" / c.name)]
        estimates = [nested_components(diff) for diff in group_diffs(path, cells).values()]
        where = f"{len(estimates)} generator rows of the benchmark {path}"
    else:
        runs = [p.parent.parent for p in sorted(path.glob("**/dice_gain/per_patient.csv"))]
        estimates = [nested_components(per_patient_diffs(run)[1][None, None]) for run in runs]
        where = f"{len(runs)} run(s) under {path}"
    if not estimates:
        raise RunError(f"--from {path}: no finished benchmark cells and no run with dice_gain/per_patient.csv")
    out = {}
    for key in COMPONENTS:
        values = [e[key] for e in estimates if np.isfinite(e[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out, where


def measure_step_seconds(config: Config, prepared, device, budget_s: float = 1.5) -> tuple[float, float]:
    """(seconds per train_step, seconds per sampled slice) of ``config``'s generator: a short timing."""


    gen = build_generator(config, device)
    gen.setup(train_context(config, prepared, gen, baseline_store(config, prepared, device)))
    data = prepared.train.to_batch().to(device)
    gen.train()

    def step(i: int) -> None:
        rows = batch_indices(i, len(prepared.train), config.train.batch_size, config.seed).to(device)
        gen.train_step(Batch(data.image[rows], data.mask[rows], data.cond[rows]), i)

    step(0)  # warm-up: allocation, oneDNN kernel choice
    n, t0 = 0, time.perf_counter()
    while n < 2 or (n < 20 and time.perf_counter() - t0 < budget_s):
        step(n + 1)
        n += 1
    train_s = (time.perf_counter() - t0) / n
    gen.eval()
    k = min(32, len(prepared.train))
    t0 = time.perf_counter()
    with torch.no_grad():
        gen.sample(k, cond=data.cond[:k].cpu(), masks=data.mask[:k].cpu() if gen.needs_masks else None,
                   generator=torch.Generator().manual_seed(0))
    return train_s, (time.perf_counter() - t0) / k


def measure_unet_seconds(config: Config, prepared, device) -> float:
    """Seconds of one segmenter training of ``config.seg`` (steps and validations), from two short timings."""


    seg = config.seg

    def timed(steps: int) -> float:
        t0 = time.perf_counter()
        train_unet([Pool.of(prepared.train)], prepared.val, dataclasses.replace(seg, steps=steps, val_every=steps),
                   seed=0, device=device)
        return time.perf_counter() - t0

    timed(2)  # warm-up
    short, long = timed(2), timed(8)
    per_step = max((long - short) / 6, 1e-6)
    per_validation = max(short - 2 * per_step, 0.0)
    return seg.steps * per_step + -(-seg.steps // seg.val_every) * per_validation


def _finished_cell_seconds(path: Path) -> dict[str, float]:
    """generator -> mean wall seconds of its finished cells in a benchmark folder (training + sampling + evaluation)."""
    out: dict[str, list[float]] = {}
    for results_file in sorted((path / "cells").glob("*/results.json")) if (path / "cells").is_dir() else []:
        results = read_json(results_file, f"Score that cell again (python cli.py evaluate --run {results_file.parent})",
                            RunError)
        if "values" not in results.get("evaluation", {}).get("dice_gain", {}):
            continue
        generator = RunDir(results_file.parent).generator()
        if generator is None:
            continue  # not a cell the benchmark wrote (no config.yaml naming its generator)
        sampled = results.get("synthetic", {}).get("seconds_per_100", 0) * results.get("data", {}).get(
            "train_slices", 0) / 100
        seconds = results.get("train", {}).get("seconds", 0) + sampled + sum(
            e.get("seconds", 0) for e in results.get("evaluation", {}).values() if isinstance(e, dict))
        out.setdefault(generator, []).append(seconds)
    return {g: float(np.mean(v)) for g, v in out.items()}


def estimate_plan(plan: Plan, target_effect: float = 0.03, from_path: str | Path | None = None,
                  jobs: int = 0) -> dict[str, Any]:
    """Before any work: the MDE80 and wall time of designs draws x seeds for ``plan``'s other axes.

    Variance components come from ``from_path`` (a benchmark folder or runs;
    what it cannot measure, and everything without it, from the documented
    defaults); times from the finished cells of ``from_path``, else from a
    short timing of each generator's train_step and one segmenter on this
    machine, at the threads a cell gets with ``jobs`` cells at once.
    """

    for g in plan.generators:
        GENERATORS.get(g)
    components, sources = default_components()
    if from_path is not None:
        measured, where = measured_components(from_path)
        for key, value in measured.items():
            if np.isfinite(value):
                components[key], sources[key] = value, f"measured on {where}"

    # Times: one cell's generator and evaluation, one baseline, per generator; measured here.
    jobs = jobs or machine_threads()
    threads = max(1, machine_threads() // jobs)
    set_threads(threads)
    first = Cell(plan.generators[0], plan.regimes[0], plan.ratios[0], 0, 0)
    config = cell_config(plan, first, threads)
    device = resolve_device(config.train.device)
    prepared = prepare_data(config)
    dice_gain = build_evaluators(config, ["dice_gain"])["dice_gain"]
    unet_seeds, patients = dice_gain.seeds, len(prepared.split["test"])
    budgets = max(1, len(plan.budgets))  # each budget samples and scores once; training is nested
    levels = max(1, len(plan.seg_augment))  # each further augmentation level re-scores every trained cell

    def arms(ratio: float) -> float:
        """U-Nets per U-Net seed in one scoring, in units of a real-only U-Net: an arm that forwards
        (1 + ratio) x the batch (add, its equal-compute control) costs about that much more."""
        wide = 1 + ratio
        return (sum(wide if m == "add" else 1.0 for m in dice_gain.modes) + (wide if dice_gain.compute_control else 0)
                + int(dice_gain.tstr) + len(dice_gain.controls))
    unet_s = measure_unet_seconds(config, prepared, device)
    slices_per_patient = len(prepared.train) / max(1, len(prepared.split["train"]))
    finished = _finished_cell_seconds(Path(from_path)) if from_path is not None else {}
    cell_s: dict[tuple[str, int, float], float] = {}
    step_times: dict[str, dict[str, Any]] = {}
    for g in plan.generators:
        if g in finished:
            step_times[g] = {"source": f"finished cells of {from_path}", "cell_seconds": finished[g]}
            for n in plan.regimes:
                for r in plan.ratios:
                    cell_s[(g, n, r)] = finished[g] * budgets  # a nested cell's time is its extra steps only
            continue
        gconfig = cell_config(plan, Cell(g, plan.regimes[0], plan.ratios[0], 0, 0), threads)
        train_step_s, sample_s = measure_step_seconds(gconfig, prepared, device)
        # Nested budgets: one training to the longest budget, a sampling and a scoring per budget.
        longest = max(plan.budgets) if plan.budgets else None
        train_s = (longest or plan.budget_seconds) if plan.budget == "seconds" else \
            (longest or gconfig.train.steps) * train_step_s
        step_times[g] = {"source": "timed here", "train_step_seconds": train_step_s,
                         "sample_seconds_per_slice": sample_s, "train_seconds": train_s}
        for n in plan.regimes:
            for r in plan.ratios:
                synthetic = max(r, gconfig.run.synthetic_ratio) * slices_per_patient * n
                cell_s[(g, n, r)] = train_s + budgets * (synthetic * sample_s + levels * arms(r) * unet_seeds * unet_s)

    # The designs: each draws x seeds with the plan's generators, regimes and ratios.
    rows = []
    for draws in sorted({*PLAN_DRAWS, plan.draws}):
        for seeds in sorted({*PLAN_SEEDS, plan.seeds}):
            mde = design_mde(components, draws, seeds, unet_seeds, patients)
            cells = len(plan.generators) * len(plan.regimes) * len(plan.ratios) * draws * seeds * budgets
            work = sum(cell_s.values()) * draws * seeds + len(plan.regimes) * draws * levels * unet_seeds * unet_s
            rows.append({"draws": draws, "seeds": seeds, "cells": cells, "mde80": mde,
                         "meets_target": mde <= target_effect, "wall_seconds": work / jobs,
                         "this_plan": (draws, seeds) == (plan.draws, plan.seeds)})
    meeting = [r for r in rows if r["meets_target"]]
    return {"target_effect": target_effect, "components": components, "component_sources": sources,
            "unet_seeds": unet_seeds, "test_patients": patients, "jobs": jobs, "threads_per_cell": threads,
            "unet_seconds": unet_s, "generators": step_times, "rows": rows,
            "cheapest": min(meeting, key=lambda r: r["wall_seconds"]) if meeting else None}


def _hms(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}" if minutes >= 60 else f"{max(seconds, 0) / 60:.1f} min"


def format_estimate(est: dict[str, Any]) -> str:
    """The --plan table and where its numbers come from."""
    lines = [f"benchmark --plan: target effect {est['target_effect']:g} Dice at 80% power, {est['test_patients']} "
             f"test patients, {est['unet_seeds']} U-Net seeds per cell, {est['jobs']} cell(s) at once with "
             f"{est['threads_per_cell']} thread(s) each", "", "Variance components (Dice^2):"]
    for key, value in est["components"].items():
        lines.append(f"  {key:14s} {value:.6f}  {est['component_sources'][key]}")
    used = {part for part in ("measured", "assumed") if any(f"default ({part}" in v
                                                            for v in est["component_sources"].values())}
    for part, note in default_notes().items():
        if part in used:
            lines.append(f"  default ({part}): {note}")
    lines += ["", f"Times: one segmenter {est['unet_seconds']:.1f} s (timed here)"]
    for g, t in est["generators"].items():
        if "cell_seconds" in t:
            lines.append(f"  {g}: {t['cell_seconds']:.0f} s per cell ({t['source']})")
        else:
            lines.append(f"  {g}: {t['train_step_seconds'] * 1000:.1f} ms per train_step, {t['train_seconds']:.1f} s "
                         f"of training, {t['sample_seconds_per_slice'] * 1000:.1f} ms per sampled slice ({t['source']})")
    lines += ["", "| draws | seeds | cells | MDE80 | estimated wall time | meets target |", "|---|---|---|---|---|---|"]
    for r in est["rows"]:
        mark = " (this plan)" if r["this_plan"] else ""
        lines.append(f"| {r['draws']} | {r['seeds']} | {r['cells']} | {r['mde80']:.3f} | {_hms(r['wall_seconds'])} | "
                     f"{'yes' if r['meets_target'] else 'no'}{mark} |")
    best = est["cheapest"]
    lines.append("")
    lines.append(f"Cheapest design that meets the target: --draws {best['draws']} --seeds {best['seeds']} "
                 f"(MDE80 {best['mde80']:.3f}, about {_hms(best['wall_seconds'])})." if best else
                 "No design in the table meets the target: more test patients or U-Net seeds "
                 "(evaluators.dice_gain.seeds) lower the patient and residual terms that draws cannot.")
    lines.append("Wall times: per-cell times x cells / cells at once, plus the baselines; evaluators other than "
                 "dice_gain's U-Nets are not counted when timed here. Nothing was trained.")
    return "\n".join(lines)

