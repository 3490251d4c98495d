"""``benchmark --plan``: how many draws x seeds a target effect needs, and how long that takes.

Variance components come from a finished benchmark or runs (``--from``), else
from the recorded defaults shipped beside this module; times from finished
cells, else from a short timing of each generator and one segmenter here.
Nothing is trained.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.bench.cells import WorkerSetup, is_finished
from toolkit.bench.leaderboard import COMPONENTS, group_diffs, nested_components, per_patient_diffs
from toolkit.bench.plan import PLAN_FIX, Cell, Plan, cell_config, plan_fields
from toolkit.bench.timing import (
    GENERATOR,
    UNET,
    Contenders,
    makespan,
    measure_step_seconds,
    measure_unet_seconds,
)
from toolkit.experiment import build_evaluators, prepare_data
from toolkit.io import read_json
from toolkit.registry import GENERATORS
from toolkit.rundir import RunDir, RunError
from toolkit.runtime import machine_threads, resolve_device, set_threads
from toolkit.seg.stats import Power
from toolkit.seg.workers import plan as unet_plan

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


#: A re-scored cell's folder name ends in its augmentation level (toolkit.bench.plan.Cell.name).
RESCORED_NAME = re.compile(r"-a[a-z]+$")


def _finished_cell_seconds(path: Path) -> dict[str, float]:
    """generator -> mean wall seconds of its finished cells in a benchmark folder (training + sampling + evaluation)."""
    out: dict[str, list[float]] = {}
    for results_file in sorted((path / "cells").glob("*/results.json")) if (path / "cells").is_dir() else []:
        if RESCORED_NAME.search(results_file.parent.name):
            continue  # a re-scoring: it copies the trained cell's training summary, and trained nothing
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
                  jobs: int = 0, plugins: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Before any work: the MDE80 and wall time of designs draws x seeds for ``plan``'s other axes.

    Variance components come from ``from_path`` (a benchmark folder or runs;
    what it cannot measure, and everything without it, from the documented
    defaults); times from the finished cells of ``from_path``, else from a
    short timing of each generator's train_step and one segmenter on this
    machine, at the threads a cell gets with ``jobs`` cells at once and beside
    contenders that keep the other cores as busy as the benchmark will
    (spawned processes: ``plugins`` are the --plugins folders they load).
    """

    for g in plan.generators:
        GENERATORS.get(g)
    components, sources = default_components()
    if from_path is not None:
        measured, where = measured_components(from_path)
        for key, value in measured.items():
            if np.isfinite(value):
                components[key], sources[key] = value, f"measured on {where}"

    cores = machine_threads()
    jobs = jobs or cores
    threads = max(1, cores // jobs)
    first = Cell(plan.generators[0], plan.regimes[0], plan.ratios[0], 0, 0)
    config = cell_config(plan, first, threads)
    device = resolve_device(config.train.device)
    prepared = prepare_data(config)
    dice_gain = build_evaluators(config, ["dice_gain"])["dice_gain"]
    unet_seeds, patients = dice_gain.seeds, len(prepared.split["test"])
    # A cell's U-Nets go `processes` at a time, each at `unet_threads` (toolkit.bench.plan.seg_cores).
    how = unet_plan(config.seg, device)
    unet_threads = how.threads or threads

    def arms(ratio: float) -> float:
        """U-Nets per U-Net seed in one scoring, in units of a real-only U-Net: an arm that forwards
        (1 + ratio) x the batch (add, its equal-compute control) costs about that much more."""
        wide = 1 + ratio
        return (sum(wide if m == "add" else 1.0 for m in dice_gain.modes) + (wide if dice_gain.compute_control else 0)
                + int(dice_gain.tstr) + len(dice_gain.controls))

    finished = _finished_cell_seconds(Path(from_path)) if from_path is not None else {}
    timed = [g for g in plan.generators if g not in finished]
    # Timed beside contenders: the U-Nets with every other core busy on U-Nets, a generator beside jobs - 1
    # copies of itself (the benchmark's other cells).
    setup = WorkerSetup.here(plugins)
    set_threads(unet_threads)
    with Contenders(max(0, cores // unet_threads - 1) if device.type == "cpu" else 0, unet_threads, setup) as others:
        if others.n:
            others.busy(UNET, config)
        unet_s = measure_unet_seconds(config, prepared, device)
        unet_source = "timed here" + (f" beside {others.n} busy U-Net process(es)" if others.n else "")
    set_threads(threads)
    slices_per_patient = len(prepared.train) / max(1, len(prepared.split["train"]))
    step_times: dict[str, dict[str, Any]] = {}
    with Contenders((jobs - 1) if timed and device.type == "cpu" else 0, threads, setup) as others:
        for g in plan.generators:
            if g in finished:
                step_times[g] = {"source": f"finished cells of {from_path}", "cell_seconds": finished[g]}
                continue
            gconfig = cell_config(plan, Cell(g, plan.regimes[0], plan.ratios[0], 0, 0), threads)
            if others.n:
                others.busy(GENERATOR, gconfig)
            train_step_s, sample_s = measure_step_seconds(gconfig, prepared, device)
            longest = max(plan.budgets) if plan.budgets else None
            train_s = (longest or plan.budget_seconds) if plan.budget == "seconds" else \
                (longest or gconfig.train.steps) * train_step_s
            step_times[g] = {"source": "timed here" + (f" beside {others.n} busy cell(s)" if others.n else ""),
                             "train_step_seconds": train_step_s, "sample_seconds_per_slice": sample_s,
                             "train_seconds": train_s, "synthetic_ratio": gconfig.run.synthetic_ratio}

    # One real-only U-Net per seed, `processes` at a time: a baseline task, and the unit of a cell's scoring.
    baseline_s = unet_seeds * unet_s / max(1, min(how.processes, unet_seeds))

    def scoring(ratio: float) -> float:
        """Wall seconds of one cell's dice_gain U-Nets (arms x seeds, `processes` at a time)."""
        return arms(ratio) * baseline_s

    def cell_seconds(cell: Cell) -> float:
        """Wall seconds of one cell: its share of training (a nested budget: the steps past the shorter
        cell), its sampling and its scoring; a re-scored cell scores only."""
        if cell.rescored:
            return scoring(cell.ratio)
        t = step_times[cell.generator]
        if "cell_seconds" in t:
            return t["cell_seconds"]
        if plan.budgets:
            shorter = plan.shorter(cell)
            extra = cell.budget - (shorter.budget if shorter else 0)
            train_s = extra if plan.budget == "seconds" else extra * t["train_step_seconds"]
        else:
            train_s = t["train_seconds"]
        synthetic = max(cell.ratio, t["synthetic_ratio"]) * slices_per_patient * cell.n_train
        return train_s + synthetic * t["sample_seconds_per_slice"] + scoring(cell.ratio)

    def wall_seconds(design: Plan) -> float:
        """The benchmark's stages one after the other (as toolkit.bench.run runs them), each its makespan."""
        cells = design.cells()
        stages = [[baseline_s] * len({(c.n_train, c.draw, c.augment) for c in cells})]
        for b in dict.fromkeys(c.budget for c in cells):
            stages.append([cell_seconds(c) for c in cells if not c.rescored and c.budget == b])
        stages.append([cell_seconds(c) for c in cells if c.rescored])
        return sum(makespan(s, jobs) for s in stages)

    # The designs: each draws x seeds with the plan's generators, regimes and ratios.
    rows = []
    for draws in sorted({*PLAN_DRAWS, plan.draws}):
        for seeds in sorted({*PLAN_SEEDS, plan.seeds}):
            design = dataclasses.replace(plan, draws=draws, seeds=seeds)
            mde = design_mde(components, draws, seeds, unet_seeds, patients)
            cells = len(plan.generators) * len(plan.regimes) * len(plan.ratios) * draws * seeds * max(1, len(plan.budgets))
            rows.append({"draws": draws, "seeds": seeds, "cells": cells, "mde80": mde,
                         "meets_target": mde <= target_effect, "wall_seconds": wall_seconds(design),
                         "this_plan": (draws, seeds) == (plan.draws, plan.seeds)})
    meeting = [r for r in rows if r["meets_target"]]
    return {"target_effect": target_effect, "components": components, "component_sources": sources,
            "unet_seeds": unet_seeds, "test_patients": patients, "jobs": jobs, "threads_per_cell": threads,
            "unet_seconds": unet_s, "unet_source": unet_source, "unet_processes": how.processes, "unet_threads": unet_threads,
            "generators": step_times, "rows": rows,
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
    lines += ["", f"Times: one segmenter {est['unet_seconds']:.1f} s at {est['unet_threads']} thread(s), "
                  f"{est['unet_processes']} at once per cell ({est['unet_source']})"]
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
    lines.append("Wall times: the benchmark's stages (the baselines, each budget, the re-scorings) one after the "
                 "other, each the time its cells take on the jobs, handed out in order; evaluators other than "
                 "dice_gain's U-Nets are not counted when timed here. Nothing was trained.")
    return "\n".join(lines)

