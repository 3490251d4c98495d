"""``benchmark``: every generator through the whole chain, per cell, ranked on one leaderboard.

A cell is (generator, regime = number of real training patients, ratio =
synthetic:real, draw = which training patients, generator seed). Each cell is
an ordinary run (``runs/<benchmark>/cells/<cell>/``): training-patient subset
for that draw -> generator -> synthetic set -> segmenter arms. So a cell can
be inspected, re-evaluated or resumed like any run, and a benchmark that was
interrupted continues where it stopped: finished cells are never recomputed.

The real-only baselines are trained first, once per (regime, draw, U-Net
seed), into the shared baseline cache; every generator's cells then load
them (``baselines_trained`` is 0 in every cell). Budgets are equal: every
generator trains for the profile's ``train.steps`` whatever its own config
file says, and the leaderboard shows each one's training time.

Cells are independent tasks run in a local process pool (``jobs`` workers,
the machine's cores split between them); the aggregation is in
``toolkit.leaderboard_bench``.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit.config import Config, resolve
from toolkit.io import atomic_write
from toolkit.registry import GENERATORS
from toolkit.rundir import RunDir, RunError
from toolkit.runtime import machine_threads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    generator: str
    n_train: int
    ratio: float
    draw: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.generator}-n{self.n_train}-r{self.ratio:g}-d{self.draw}-s{self.seed}"


@dataclass(frozen=True)
class Plan:
    """What a benchmark runs; written to ``benchmark.json`` so a resumed benchmark runs the same cells."""

    generators: tuple[str, ...]
    regimes: tuple[int, ...]
    ratios: tuple[float, ...]
    draws: int
    seeds: int
    profile: str
    config_files: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()

    def cells(self) -> list[Cell]:
        return [Cell(g, n, r, d, s) for n, r, d, s, g in itertools.product(
            self.regimes, self.ratios, range(self.draws), range(self.seeds), self.generators)]


def cell_config(plan: Plan, cell: Cell, threads: int) -> Config:
    """The run config of one cell: the generator's own layer, the plan's overrides, then the cell's fields."""
    base = resolve(profile=plan.profile, config_files=plan.config_files, overrides=plan.overrides)
    config = resolve(generator=cell.generator, profile=plan.profile, config_files=plan.config_files,
                     overrides=plan.overrides)
    return config.replace({
        "train.steps": base.train.steps,  # equal step budgets, whatever a generator's file says
        "split.n_train_patients": cell.n_train, "split.draw": cell.draw, "seed": cell.seed,
        "evaluators.dice_gain.ratio": cell.ratio, "run.synthetic_ratio": max(cell.ratio, base.run.synthetic_ratio),
        # The cores are split between the jobs, unless the config fixes a count.
        "train.threads": config.train.threads or threads, "seg.threads": config.seg.threads or threads,
    }, origin=f"benchmark cell {cell.name}")


def is_finished(run_dir: Path) -> bool:
    results = RunDir(run_dir).read_results()
    return "values" in results.get("evaluation", {}).get("dice_gain", {})


def _run_cell(plan: Plan, cell: Cell, cells_dir: Path, threads: int) -> str:
    """One cell in a worker process: a run, resumed if it was interrupted, skipped if it is finished."""
    from toolkit.experiment import run_experiment

    run_dir = cells_dir / cell.name
    if is_finished(run_dir):
        return "kept"
    config = cell_config(plan, cell, threads)
    resume = (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "config.yaml").is_file()
    run_experiment(config, out=cells_dir, name=cell.name, force=not resume and run_dir.exists(), resume=resume,
                   progress=False, quiet=True)
    return "resumed" if resume else "ran"


def _train_baselines(plan: Plan, n_train: int, draw: int, threads: int) -> int:
    """The real-only baselines of one (regime, draw), into the shared cache; returns how many were trained."""
    from toolkit.experiment import baseline_store, build_evaluators, prepare_data
    from toolkit.runtime import resolve_device, set_threads

    cell = Cell(plan.generators[0], n_train, plan.ratios[0], draw, 0)
    config = cell_config(plan, cell, threads)
    set_threads(threads)
    device = resolve_device(config.train.device)
    store = baseline_store(config, prepare_data(config), device)
    for seed in range(build_evaluators(config, ["dice_gain"])["dice_gain"].seeds):
        store.get(seed)
    return store.trained


def _pool_map(jobs: int, fn, tasks: list[tuple]) -> list:
    if jobs <= 1:
        return [fn(*t) for t in tasks]
    import multiprocessing

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*tasks)))


def run_benchmark(plan: Plan, out: str | Path = "runs", name: str | None = None, jobs: int = 1) -> Path:
    """Run (or continue) the plan's cells and write the leaderboard; returns the benchmark folder."""
    from toolkit.leaderboard_bench import write_leaderboard

    for g in plan.generators:
        GENERATORS.get(g)  # an unknown name fails before any work, with the valid ones
    for cell in plan.cells()[:1]:
        cell_config(plan, cell, 1)  # a bad setting fails before any work
    name = name or f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    bench = Path(out) / name
    plan_file = bench / "benchmark.json"
    if plan_file.is_file():
        saved = json.loads(plan_file.read_text())["plan"]
        if saved != json.loads(json.dumps(asdict(plan))):
            raise RunError(f"{bench} holds another benchmark plan ({plan_file}); use another --name, or the same "
                           "options to continue it")
    else:
        RunDir.create(out, name)
    atomic_write(plan_file, json.dumps({"plan": asdict(plan), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
                                       indent=2))
    threads = max(1, machine_threads() // max(jobs, 1))
    cells_dir = bench / "cells"

    # Baselines first, once per (regime, draw): every generator's cells then load them from the cache.
    pairs = sorted({(c.n_train, c.draw) for c in plan.cells()})
    t0 = time.perf_counter()
    trained = _pool_map(jobs, _train_baselines, [(plan, n, d, threads) for n, d in pairs])
    log.info("benchmark: %d baselines trained for %d (regime, draw) pairs in %.0f s", sum(trained), len(pairs),
             time.perf_counter() - t0)

    # Cells: each a whole run; finished ones are kept.
    cells = plan.cells()
    t0 = time.perf_counter()
    status = _pool_map(jobs, _run_cell, [(plan, c, cells_dir, threads) for c in cells])
    log.info("benchmark: %d cells (%d kept, %d ran, %d resumed) in %.0f s", len(cells), status.count("kept"),
             status.count("ran"), status.count("resumed"), time.perf_counter() - t0)
    write_leaderboard(bench, plan, cells, baselines_trained=sum(trained))
    return bench


def describe(plan: Plan) -> dict[str, Any]:
    return {"cells": len(plan.cells()), "generators": list(plan.generators), "regimes": list(plan.regimes),
            "ratios": list(plan.ratios), "draws": plan.draws, "seeds": plan.seeds}
