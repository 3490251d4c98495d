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

Cells are independent tasks behind a small executor seam, a callable
``(fn, tasks) -> results``: :func:`local_executor` runs them in a local
process pool (``jobs`` workers, the machine's cores split between them),
:func:`ray_executor` submits each as a Ray task (``ray`` is an optional
extra, imported only there). Every task writes its run into the benchmark
folder itself, so the driver may die: the same command continues. The
aggregation is in ``toolkit.leaderboard_bench``, the ``--plan`` estimate in
:func:`estimate_plan`.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.config import Config, resolve
from toolkit.data.splits import distinct_draws
from toolkit.io import atomic_write, read_json
from toolkit.registry import GENERATORS
from toolkit.rundir import RunDir, RunError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    generator: str
    n_train: int
    ratio: float
    draw: int
    seed: int
    augment: str = ""  # seg.augment of this cell's evaluation ("": the config's own)
    rescored: bool = False  # True: scores the trained cell's synthetic set again at `augment`, trains nothing

    @property
    def name(self) -> str:
        base = f"{self.generator}-n{self.n_train}-r{self.ratio:g}-d{self.draw}-s{self.seed}"
        return f"{base}-a{self.augment}" if self.rescored else base

    @property
    def trained(self) -> Cell:
        """The cell whose generator training (and synthetic set) this one uses."""
        return replace(self, augment=self._first_augment, rescored=False) if self.rescored else self

    _first_augment: str = field(default="", compare=False, repr=False)


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
    budget: str = "steps"  # steps: the profile's train.steps for all; seconds: train.max_seconds for all
    budget_seconds: float | None = None  # the wall-clock budget per generator training (budget: seconds)
    # Evaluation dimensions: each trained cell is scored under every usage mode (arms of one dice_gain
    # evaluation) and every segmenter augmentation level (the first in the cell itself, the others by
    # re-scoring its synthetic set); () keeps the config's own.
    modes: tuple[str, ...] = ()
    seg_augment: tuple[str, ...] = ()

    def cells(self) -> list[Cell]:
        """The trained cells, then (for each further augmentation level) the re-scored ones."""
        first = self.seg_augment[0] if self.seg_augment else ""
        trained = [Cell(g, n, r, d, s, first) for n, r, d, s, g in itertools.product(
            self.regimes, self.ratios, range(self.draws), range(self.seeds), self.generators)]
        rescored = [Cell(c.generator, c.n_train, c.ratio, c.draw, c.seed, level, True, _first_augment=first)
                    for level in self.seg_augment[1:] for c in trained]
        return trained + rescored


#: ``train.steps`` under a wall-clock budget: a cap that the time budget reaches first.
SECONDS_BUDGET_STEPS = 1_000_000


def budget_settings(plan: Plan, base: Config) -> dict[str, Any]:
    """The train keys that make every generator's budget equal: the same steps, or the same seconds."""
    if plan.budget == "steps":
        return {"train.steps": base.train.steps, "train.max_seconds": base.train.max_seconds}
    if plan.budget == "seconds":
        if not plan.budget_seconds or plan.budget_seconds <= 0:
            raise ValueError("--budget seconds needs --budget-seconds S (> 0): the training seconds every "
                             "generator gets")
        return {"train.steps": SECONDS_BUDGET_STEPS, "train.max_seconds": float(plan.budget_seconds)}
    raise ValueError(f"budget must be steps or seconds, got {plan.budget!r}")


def cell_config(plan: Plan, cell: Cell, threads: int) -> Config:
    """The run config of one cell: the generator's own layer, the plan's overrides, then the cell's fields."""
    base = resolve(profile=plan.profile, config_files=plan.config_files, overrides=plan.overrides)
    config = resolve(generator=cell.generator, profile=plan.profile, config_files=plan.config_files,
                     overrides=plan.overrides)
    return config.replace({
        **budget_settings(plan, base),  # equal budgets, whatever a generator's own file says
        "split.n_train_patients": cell.n_train, "split.draw": cell.draw, "seed": cell.seed,
        "evaluators.dice_gain.ratio": cell.ratio, "run.synthetic_ratio": max(cell.ratio, base.run.synthetic_ratio),
        # The cores are split between the jobs, unless the config fixes a count.
        "train.threads": config.train.threads or threads, "seg.threads": config.seg.threads or threads,
        **({"evaluators.dice_gain.modes": list(plan.modes)} if plan.modes else {}),
        **({"seg.augment": cell.augment} if cell.augment else {}),
    }, origin=f"benchmark cell {cell.name}")


def is_finished(run_dir: Path) -> bool:
    results = RunDir(run_dir).read_results()
    return "values" in results.get("evaluation", {}).get("dice_gain", {})


@dataclass(frozen=True)
class WorkerSetup:
    """What a task needs in a fresh process (a pool worker, a Ray worker on another node) before it starts."""

    plugins: tuple[str, ...] = ()  # --plugins folders to load
    env: dict[str, str] = field(default_factory=dict)  # e.g. GANSEG_CACHE, so every task shares the baseline cache

    @classmethod
    def here(cls, plugins: Sequence[str] = ()) -> WorkerSetup:
        env = {k: os.environ[k] for k in ("GANSEG_CACHE",) if k in os.environ}
        return cls(tuple(str(Path(p).resolve()) for p in plugins), env)

    def apply(self) -> None:
        from toolkit.registry import load_plugin_dir

        os.environ.update(self.env)
        for folder in self.plugins:
            files = sorted(p for p in Path(folder).glob("*.py") if not p.name.startswith("_"))
            if not all(f"ganseg_user_plugins.{p.stem}" in sys.modules for p in files):
                load_plugin_dir(folder)  # once per process: a second load would register the names twice


def _run_cell(plan: Plan, cell: Cell, cells_dir: Path, threads: int, setup: WorkerSetup = WorkerSetup()) -> str:
    """One cell in a worker process: a run, resumed if it was interrupted, skipped if it is finished."""
    from toolkit.experiment import run_experiment

    setup.apply()
    run_dir = cells_dir / cell.name
    if cell.rescored:
        return _rescore_cell(plan, cell, cells_dir, threads)
    config = cell_config(plan, cell, threads)
    stale = stale_split(run_dir, config)
    if stale:  # e.g. trained on a draw that repeated another's patients, before draws were made distinct
        log.warning("benchmark: cell %s trained on %s, but its draw is now %s; running it again", cell.name,
                    stale[0], stale[1])
    elif is_finished(run_dir):
        return "kept"
    resume = not stale and (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "config.yaml").is_file()
    run_experiment(config, out=cells_dir, name=cell.name, force=not resume and run_dir.exists(), resume=resume,
                   progress=False, quiet=True)
    return "rerun" if stale else "resumed" if resume else "ran"


def _run_cell_or_fail(plan: Plan, cell: Cell, cells_dir: Path, threads: int,
                      setup: WorkerSetup = WorkerSetup()) -> str:
    """:func:`_run_cell`, with a failure returned as ``failed: <error>`` so the other cells go on.

    The cell's folder keeps what it wrote (its log.txt, its last checkpoint): the same benchmark
    command resumes it, and never touches the finished cells.
    """
    try:
        return _run_cell(plan, cell, cells_dir, threads, setup)
    except Exception as exc:  # one cell's failure, reported at the end; Ctrl-C still stops everything
        ours = type(exc).__module__.startswith("toolkit")  # ganseg's errors say what they are; others get a name
        text = (str(exc) if ours else f"{type(exc).__name__}: {exc}").strip().splitlines()[0]
        logfile = cells_dir / cell.name / "log.txt"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "a") as f:  # the traceback, for whoever fixes it (a plugin author needs it)
            f.write(f"benchmark: cell failed: {text}\n" + "".join(traceback.format_exception(exc)))
        log.error("benchmark: cell %s failed: %s (traceback in %s)", cell.name, text, logfile)
        return f"failed: {text}"


#: What to do about a damaged benchmark.json: the cells are runs and keep their results.
PLAN_FIX = ("Restore it (the same command wrote it), or run the benchmark under another --name; the finished cells "
            "under cells/ are runs and keep their results (`evaluate --run` scores one again)")


class CellsFailed(RunError):
    """Some cells failed; the others finished and are in the leaderboard."""


def _rescore_cell(plan: Plan, cell: Cell, cells_dir: Path, threads: int) -> str:
    """Score a trained cell's synthetic set under another augmentation level, in a run folder of its own.

    The folder holds copies of the trained cell's config (with this cell's settings), split, synthetic set
    and training summary, and no checkpoint: no generator trains again.
    """
    from toolkit.experiment import evaluate_run

    run_dir, source = cells_dir / cell.name, cells_dir / cell.trained.name
    if is_finished(run_dir) and not _rescore_stale(run_dir, source):
        return "kept"
    if not is_finished(source):
        raise RunError(f"benchmark: cell {cell.name} re-scores {source}, which has not finished")
    rundir = RunDir.create(cells_dir, cell.name, force=run_dir.exists())
    rundir.write_config(cell_config(plan, cell, threads).to_yaml())
    for name in ("split.json", "synthetic/synthetic.npz"):
        target = run_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
    trained = RunDir(source).read_results()
    rundir.merge_results({k: trained[k] for k in ("train", "synthetic", "data") if k in trained}
                         | {"rescored_from": cell.trained.name})
    evaluate_run(run_dir, quiet=True)
    return "rescored"


def _rescore_stale(run_dir: Path, source: Path) -> bool:
    """The trained cell's synthetic set changed since this copy was scored (it was trained again)."""
    copy, original = run_dir / "synthetic" / "synthetic.npz", source / "synthetic" / "synthetic.npz"
    return not copy.is_file() or not original.is_file() or original.stat().st_mtime > copy.stat().st_mtime


def stale_split(run_dir: Path, config: Config) -> tuple[list[str], list[str]] | None:
    """(saved, current) training patients when a cell's saved split is not the one its config draws now."""
    from toolkit.data import split_patients

    saved = RunDir(run_dir).read_split()
    if saved is None:
        return None
    current = split_patients(sorted(set(sum(saved.values(), []))), config.split)
    if all(current[k] == saved.get(k, []) for k in current):
        return None
    return saved.get("train", []), current["train"]


def _train_baselines(plan: Plan, n_train: int, draw: int, threads: int, setup: WorkerSetup = WorkerSetup(),
                     augment: str = "") -> int:
    """The real-only baselines of one (regime, draw), into the shared cache; returns how many were trained."""
    from toolkit.experiment import baseline_store, build_evaluators, prepare_data
    from toolkit.runtime import resolve_device, set_threads

    setup.apply()
    cell = Cell(plan.generators[0], n_train, plan.ratios[0], draw, 0, augment)
    config = cell_config(plan, cell, threads)
    set_threads(threads)
    device = resolve_device(config.train.device)
    store = baseline_store(config, prepare_data(config), device)
    store.get_many(list(range(build_evaluators(config, ["dice_gain"])["dice_gain"].seeds)))  # together: all cores
    return store.trained


# Executors: callables (fn, tasks) -> [fn(*task) for task in tasks], in order -------------------------

Executor = Callable[[Callable[..., Any], list[tuple]], list]


def _pool_map(jobs: int, fn, tasks: list[tuple]) -> list:
    if jobs <= 1 or len(tasks) <= 1:
        return [fn(*t) for t in tasks]
    import multiprocessing

    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*tasks)))


def local_executor(jobs: int) -> tuple[Executor, int]:
    """A process pool of ``jobs`` workers on this machine, and the threads each task gets (cores // jobs)."""
    from toolkit.runtime import machine_threads

    return (lambda fn, tasks: _pool_map(jobs, fn, tasks)), max(1, machine_threads() // max(jobs, 1))


class RayMissing(RuntimeError):
    """``--executor ray`` without the ``ray`` package."""


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def ray_runtime_env() -> dict[str, Any]:
    """The job environment of a Ray instance started here: workers import this checkout's toolkit.

    A local Ray instance starts its workers from the same Python; with
    PYTHONPATH they import the ``toolkit`` the driver runs (a source checkout
    beside an installed copy would otherwise be shadowed). On a remote
    cluster ganseg must be installed on every node, and the benchmark folder
    and the cache (``GANSEG_CACHE``) must be on storage every node sees.
    """
    source = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def ray_executor(jobs: int = 0, address: str | None = None) -> tuple[Executor, int]:
    """Every task a Ray task: ``num_cpus`` = its threads, one GPU per task where the cluster has GPUs.

    Connects to ``address`` (``auto``, ``ray://host:10001``, ``host:6379``),
    to a Ray instance this process already started, or (None, no
    ``RAY_ADDRESS``) starts a local one. ``jobs`` cells run at once
    (0: one per cluster CPU); each task gets cluster CPUs // jobs threads.
    """
    if not ray_installed():
        raise RayMissing('--executor ray needs the ray package: pip install -e ".[ray]"')
    import ray

    if not ray.is_initialized():
        # A local instance started here gets this checkout on its workers' path; a cluster has its own install.
        local = address is None and not os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env=ray_runtime_env() if local else None)
    resources = ray.cluster_resources()
    cpus = max(1, int(resources.get("CPU", 1)))
    threads = max(1, cpus // jobs) if jobs else 1
    gpus = 1 if resources.get("GPU", 0) >= 1 else 0

    def run(fn, tasks: list[tuple]) -> list:
        remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=1)(fn)
        return ray.get([remote.remote(*t) for t in tasks])

    log.info("benchmark: Ray cluster with %d CPUs and %d GPUs, %d thread(s) and %d GPU per task", cpus,
             int(resources.get("GPU", 0)), threads, gpus)
    return run, threads


def make_executor(kind: str = "local", jobs: int = 0, ray_address: str | None = None) -> tuple[Executor, int]:
    """The executor ``kind`` (local | ray) and the threads each task gets; a missing ray fails here."""
    from toolkit.runtime import machine_threads

    if kind == "local":
        return local_executor(jobs or machine_threads())
    if kind == "ray":
        return ray_executor(jobs, ray_address)
    raise ValueError(f"executor must be local or ray, got {kind!r}")


def check_plan(plan: Plan) -> None:
    """Fail before any work (and before an executor starts): unknown generators, bad settings, a bad budget."""
    for g in plan.generators:
        GENERATORS.get(g)  # an unknown name fails with the valid ones
    for cell in plan.cells()[:1]:
        split = cell_config(plan, cell, 1).split  # a bad setting fails
        if split.train_pool is not None:  # else the pool's size is the data's; split_patients checks it there
            for n in plan.regimes:
                if plan.draws > distinct_draws(split.train_pool, n):
                    raise ValueError(
                        f"--draws {plan.draws}: {n} training patients of a pool of split.train_pool="
                        f"{split.train_pool} make only {distinct_draws(split.train_pool, n)} different training "
                        "sets; use fewer draws or a larger pool")


def check_splits(plan: Plan) -> None:
    """Every (regime, draw)'s split on the data itself, before any work: a pool the data decides
    (``split.train_pool: null``) may hold fewer distinct training sets than ``--draws``."""
    from toolkit import data as datalib

    config = cell_config(plan, plan.cells()[0], 1)
    if config.split.train_pool is not None or plan.draws == 1:
        return  # check_plan counted the pool's sets already; the data's size is checked by every run
    slices, _ = datalib.load_dataset(config.data, datalib.cache_dir())
    patients = slices.patients()
    for n in plan.regimes:
        for draw in range(plan.draws):
            datalib.split_patients(patients, replace(config.split, n_train_patients=n, draw=draw))


def _same_plan(saved: dict[str, Any], plan: Plan) -> bool:
    """The saved plan equals this one; keys a saved plan predates count as their defaults."""
    current = json.loads(json.dumps(asdict(plan)))
    defaults = json.loads(json.dumps(asdict(Plan((), (), (), 1, 1, ""))))
    return all(saved.get(k, defaults[k]) == v for k, v in current.items()) and set(saved) <= set(current)


def _extended_plan(saved: dict[str, Any], plan: Plan) -> Plan | None:
    """The plan that continues ``saved``: ``plan`` with the saved generators first; None if they differ otherwise.

    A generator added later (a new plugin, or one held back while its config changed) joins the same
    leaderboard: its cells share the baselines, the split and the budget of the others, whose finished
    cells are kept.
    """
    before = tuple(saved.get("generators", ()))
    merged = replace(plan, generators=(*before, *(g for g in plan.generators if g not in before)))
    if not _same_plan({**saved, "generators": list(merged.generators)}, merged):
        return None
    if len(merged.generators) > len(before):
        log.info("benchmark: adding %s to the plan of %s (finished cells are kept)",
                 ", ".join(merged.generators[len(before):]), ", ".join(before))
    return merged


def run_benchmark(plan: Plan, out: str | Path = "runs", name: str | None = None, jobs: int = 1,
                  executor: tuple[Executor, int] | None = None, plugins: Sequence[str] = ()) -> Path:
    """Run (or continue) the plan's cells and write the leaderboard; returns the benchmark folder.

    Args:
        jobs: cells at once in the default local pool (ignored when ``executor`` is given).
        executor: (executor, threads per task) from :func:`make_executor`; default: ``local_executor(jobs)``.
        plugins: plugin folders every task loads (the driver has loaded them already).
    """
    from toolkit.leaderboard_bench import write_leaderboard

    check_plan(plan)
    check_splits(plan)
    name = name or f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    bench = Path(out) / name
    plan_file = bench / "benchmark.json"
    if plan_file.is_file():
        saved = read_json(plan_file, PLAN_FIX, RunError, check=lambda v: v["plan"])
        continued = _extended_plan(saved, plan)
        if continued is None:
            raise RunError(f"{bench} holds another benchmark plan ({plan_file}); use another --name, or the same "
                           "options (other --generators may be added) to continue it")
        plan = continued
    else:
        RunDir.create(out, name)
    atomic_write(plan_file, json.dumps({"plan": asdict(plan), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
                                       indent=2))
    run_tasks, threads = executor or local_executor(jobs)
    setup = WorkerSetup.here(plugins)
    cells_dir = bench / "cells"

    # Baselines first, once per (regime, draw): every generator's cells then load them from the cache.
    pairs = sorted({(c.n_train, c.draw, c.augment) for c in plan.cells()})
    t0 = time.perf_counter()
    trained = run_tasks(_train_baselines, [(plan, n, d, threads, setup, a) for n, d, a in pairs])
    log.info("benchmark: %d baselines trained for %d (regime, draw) pairs in %.0f s", sum(trained), len(pairs),
             time.perf_counter() - t0)

    # Cells: each a whole run; finished ones are kept.
    # Cells: each a whole run; finished ones are kept. Then the re-scored ones (other augmentation levels).
    cells = plan.cells()
    t0 = time.perf_counter()
    status: dict[str, str] = {}
    for stage in ([c for c in cells if not c.rescored], [c for c in cells if c.rescored]):
        done = run_tasks(_run_cell_or_fail, [(plan, c, cells_dir.resolve(), threads, setup) for c in stage])
        status.update({c.name: s for c, s in zip(stage, done)})
    counts = list(status.values())
    failed = {name: s.removeprefix("failed: ") for name, s in status.items() if s.startswith("failed")}
    log.info("benchmark: %d cells (%d kept, %d ran, %d resumed, %d rerun on a changed split, %d re-scored, %d failed) "
             "in %.0f s", len(cells), counts.count("kept"), counts.count("ran"), counts.count("resumed"),
             counts.count("rerun"), counts.count("rescored"), len(failed), time.perf_counter() - t0)
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


def describe(plan: Plan) -> dict[str, Any]:
    return {"cells": len(plan.cells()), "generators": list(plan.generators), "regimes": list(plan.regimes),
            "ratios": list(plan.ratios), "draws": plan.draws, "seeds": plan.seeds,
            "budget": f"{plan.budget_seconds:g} s" if plan.budget == "seconds" else "steps"}


# --plan: how many draws x seeds a target effect needs, and how long that takes -----------------------------

#: The recorded variance components --plan assumes without --from (package data: a wheel ships it).
DEFAULTS_FILE = Path(__file__).resolve().parent / "benchmark_variance_defaults.json"
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
                sources[key] = f"default ({part}, toolkit/{DEFAULTS_FILE.name})"
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
    from toolkit.seg.stats import Power

    within = seeds * unet_seeds
    c = components
    return Power(var_seed=c["var_draw"] + c["var_gen_seed"] / seeds + c["var_unet_seed"] / within,
                 var_patient=c["var_patient"], var_residual=c["var_residual"] / within,
                 n_seeds=draws, n_patients=patients).mde()


def measured_components(path: str | Path) -> tuple[dict[str, float], str]:
    """Variance components measured in a benchmark folder's finished cells, or in a run / folder of runs.

    Components that cannot be measured there (one draw, one seed) are NaN.
    """
    from toolkit.leaderboard_bench import COMPONENTS, group_diffs, nested_components, per_patient_diffs

    path = Path(path)
    estimates = []
    if (path / "benchmark.json").is_file():
        saved = read_json(path / "benchmark.json", PLAN_FIX, RunError, check=lambda v: v["plan"])
        cells = [c for c in Plan(**_plan_fields(saved)).cells()
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


def _plan_fields(saved: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}


def measure_step_seconds(config: Config, prepared, device, budget_s: float = 1.5) -> tuple[float, float]:
    """(seconds per train_step, seconds per sampled slice) of ``config``'s generator: a short timing."""
    import torch

    from toolkit.experiment import baseline_store, build_generator, train_context
    from toolkit.train.loop import batch_indices
    from toolkit.types import Batch

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
    import dataclasses

    from toolkit.seg.train import Pool, train_unet

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
        generator = results_file.parent.name.rsplit("-n", 1)[0]
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
    from toolkit.experiment import build_evaluators, prepare_data
    from toolkit.runtime import machine_threads, resolve_device, set_threads

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
                    cell_s[(g, n, r)] = finished[g]
            continue
        gconfig = cell_config(plan, Cell(g, plan.regimes[0], plan.ratios[0], 0, 0), threads)
        train_step_s, sample_s = measure_step_seconds(gconfig, prepared, device)
        train_s = plan.budget_seconds if plan.budget == "seconds" else gconfig.train.steps * train_step_s
        step_times[g] = {"source": "timed here", "train_step_seconds": train_step_s,
                         "sample_seconds_per_slice": sample_s, "train_seconds": train_s}
        for n in plan.regimes:
            for r in plan.ratios:
                synthetic = max(r, gconfig.run.synthetic_ratio) * slices_per_patient * n
                cell_s[(g, n, r)] = train_s + synthetic * sample_s + levels * arms(r) * unet_seeds * unet_s

    # The designs: each draws x seeds with the plan's generators, regimes and ratios.
    rows = []
    for draws in sorted({*PLAN_DRAWS, plan.draws}):
        for seeds in sorted({*PLAN_SEEDS, plan.seeds}):
            mde = design_mde(components, draws, seeds, unet_seeds, patients)
            cells = len(plan.generators) * len(plan.regimes) * len(plan.ratios) * draws * seeds
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
