"""``benchmark``: every generator through the whole chain, per cell, ranked on one leaderboard.

Each cell is an ordinary run (``runs/<benchmark>/cells/<cell>/``):
training-patient subset for that draw -> generator -> synthetic set ->
segmenter arms, so a cell can be inspected, re-evaluated or resumed like any
run. The real-only baselines are trained first, once per (regime, draw, U-Net
seed, augmentation level), into the shared baseline cache; every generator's
cells then load them. Budgets are equal: every generator trains for the
profile's ``train.steps`` whatever its own config file says.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from toolkit.bench.cells import WorkerSetup, is_finished, run_cell_task, train_baselines
from toolkit.bench.executors import Executor, local_executor
from toolkit.bench.plan import PLAN_FIX, Plan, check_plan, check_splits, extended_plan
from toolkit.bench.report import write_leaderboard
from toolkit.io import atomic_write, read_json
from toolkit.rundir import RunDir, RunError

log = logging.getLogger("toolkit.benchmark")


class CellsFailed(RunError):
    """Some cells failed; the others finished and are in the leaderboard."""


def run_benchmark(plan: Plan, out: str | Path = "runs", name: str | None = None, jobs: int = 1,
                  executor: tuple[Executor, int] | None = None, plugins: Sequence[str] = ()) -> Path:
    """Run (or continue) the plan's cells and write the leaderboard; returns the benchmark folder.

    Args:
        jobs: cells at once in the default local pool (ignored when ``executor`` is given).
        executor: (executor, threads per task) from :func:`make_executor`; default: ``local_executor(jobs)``.
        plugins: plugin folders every task loads (the driver has loaded them already).
    """

    check_plan(plan)
    check_splits(plan)
    name = name or f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    bench = Path(out) / name
    plan_file = bench / "benchmark.json"
    if plan_file.is_file():
        saved = read_json(plan_file, PLAN_FIX, RunError, check=lambda v: v["plan"])
        continued = extended_plan(saved, plan)
        if continued is None:
            raise RunError(f"{bench} holds another benchmark plan ({plan_file}); use another --name, or the same "
                           "options (other --generators, more --draws or --seeds may be added) to continue it")
        plan = continued
    else:
        RunDir.create(out, name)
    atomic_write(plan_file, json.dumps({"plan": asdict(plan), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
                                       indent=2))
    run_tasks, threads = executor or local_executor(jobs)
    setup = WorkerSetup.here(plugins)

    # Baselines first, once per (regime, draw): every generator's cells then load them from the cache. Only
    # for cells still to run: a continued archive's finished draws need none.
    cells_dir = bench / "cells"
    pairs = sorted({(c.n_train, c.draw, c.augment) for c in plan.cells() if not is_finished(cells_dir / c.name)})
    t0 = time.perf_counter()
    trained = run_tasks(train_baselines, [(plan, n, d, threads, setup, a) for n, d, a in pairs])
    log.info("benchmark: %d baselines trained for %d (regime, draw) pairs in %.0f s", sum(trained), len(pairs),
             time.perf_counter() - t0)

    # Cells: each a whole run; finished ones are kept. Then the re-scored ones (other augmentation levels).
    cells = plan.cells()
    t0 = time.perf_counter()
    status: dict[str, str] = {}
    # Stages: the trained cells budget by budget (a longer one continues a shorter one's checkpoint), then the
    # re-scored ones (other augmentation levels of a trained cell's synthetic set).
    budgets = list(dict.fromkeys(c.budget for c in cells))
    stages = [[c for c in cells if not c.rescored and c.budget == b] for b in budgets]
    for stage in [*stages, [c for c in cells if c.rescored]]:
        done = run_tasks(run_cell_task, [(plan, c, cells_dir.resolve(), threads, setup) for c in stage])
        status.update({c.name: s for c, s in zip(stage, done)})
    counts = list(status.values())
    failed = {name: s.removeprefix("failed: ") for name, s in status.items() if s.startswith("failed")}
    log.info("benchmark: %d cells (%d kept, %d ran, %d continued a shorter budget, %d resumed, %d rerun on a changed "
             "split, %d re-scored, %d failed) in %.0f s", len(cells), counts.count("kept"), counts.count("ran"),
             counts.count("continued"), counts.count("resumed"), counts.count("rerun"), counts.count("rescored"),
             len(failed), time.perf_counter() - t0)
    finished = [c for c in cells if c.name not in failed]
    if finished:
        write_leaderboard(bench, plan, finished, baselines_trained=sum(trained))
    if failed:
        lines = [f"  {name}: {error} (traceback: {cells_dir / name / 'log.txt'})"
                 for name, error in failed.items()]
        where = (f"the {len(finished)} finished cells are in {bench / 'leaderboard.md'}" if finished
                 else "no cell finished, so there is no leaderboard")
        raise CellsFailed(f"benchmark: {len(failed)} of {len(cells)} cells failed; {where}:\n" + "\n".join(lines)
                          + "\nFix the cause and run the same command again: finished cells are kept, failed ones "
                          "resume from their last checkpoint")
    return bench

