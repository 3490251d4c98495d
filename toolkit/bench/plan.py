"""What a benchmark runs: its cells, each cell's run config, and the checks made before any work.

A cell is (generator, regime = number of real training patients, ratio =
synthetic:real, draw = which training patients, generator seed), plus the
evaluation dimensions it is scored under (usage modes are arms of one
``dice_gain``; a further augmentation level re-scores the trained cell's
synthetic set in a cell of its own). The plan is written to
``benchmark.json`` so that the same command continues the same cells.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from toolkit.config import Config, resolve
from toolkit.data.splits import distinct_draws
from toolkit.registry import GENERATORS

log = logging.getLogger("toolkit.benchmark")


@dataclass(frozen=True)
class Cell:
    generator: str
    n_train: int
    ratio: float
    draw: int
    seed: int
    augment: str = ""  # seg.augment of this cell's evaluation ("": the config's own)
    rescored: bool = False  # True: scores the trained cell's synthetic set again at `augment`, trains nothing
    budget: float = 0  # this cell's generator budget (train.steps or seconds) in a budget dimension; 0: the plan's one
    budget_unit: str = "steps"  # steps | seconds: how `budget` reads (and is written in the name)

    @property
    def name(self) -> str:
        base = f"{self.generator}-n{self.n_train}-r{self.ratio:g}-d{self.draw}-s{self.seed}"
        if self.budget:
            base += f"-t{self.budget:g}" if self.budget_unit == "steps" else f"-b{self.budget:g}s"
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
    # A budget dimension (--train-steps, or several --budget-seconds): each (generator, regime, ratio, draw,
    # seed) is trained to every budget in turn, a longer cell continuing the shorter one's checkpoint.
    budgets: tuple[float, ...] = ()

    def cells(self) -> list[Cell]:
        """The trained cells, shortest budget first, then (for each further augmentation level) the re-scored ones."""
        first = self.seg_augment[0] if self.seg_augment else ""
        trained = [Cell(g, n, r, d, s, first, budget=b, budget_unit=self.budget)
                   for b, n, r, d, s, g in itertools.product(self.budgets or (0,), self.regimes, self.ratios,
                                                             range(self.draws), range(self.seeds), self.generators)]
        rescored = [replace(c, augment=level, rescored=True, _first_augment=first)
                    for level in self.seg_augment[1:] for c in trained]
        return trained + rescored

    def shorter(self, cell: Cell) -> Cell | None:
        """The trained cell whose checkpoint ``cell`` continues: the same training at the next shorter budget."""
        if cell.rescored or not cell.budget or cell.budget not in self.budgets:
            return None
        i = self.budgets.index(cell.budget)
        return replace(cell, budget=self.budgets[i - 1]) if i else None


#: ``train.steps`` under a wall-clock budget: a cap that the time budget reaches first.
SECONDS_BUDGET_STEPS = 1_000_000


def budget_settings(plan: Plan, base: Config, budget: float = 0) -> dict[str, Any]:
    """The train keys that make every generator's budget equal: the same steps, or the same seconds.

    ``budget``: a cell's own value in the plan's budget dimension (0: the plan's single budget).
    """
    if any(b <= 0 for b in plan.budgets) or sorted(set(plan.budgets)) != list(plan.budgets):
        raise ValueError(f"budgets must be increasing and > 0 (nested: each continues the one before), got "
                         f"{', '.join(f'{b:g}' for b in plan.budgets)}")
    if plan.budget == "steps":
        if any(b != int(b) for b in plan.budgets):
            raise ValueError(f"--train-steps must be whole numbers of steps, got {', '.join(map(str, plan.budgets))}")
        return {"train.steps": int(budget) if budget else base.train.steps, "train.max_seconds": base.train.max_seconds}
    if plan.budget == "seconds":
        seconds = budget or plan.budget_seconds
        if not seconds or seconds <= 0:
            raise ValueError("--budget seconds needs --budget-seconds S (> 0): the training seconds every "
                             "generator gets")
        return {"train.steps": SECONDS_BUDGET_STEPS, "train.max_seconds": float(seconds)}
    raise ValueError(f"budget must be steps or seconds, got {plan.budget!r}")


def core_overrides(overrides: tuple[str, ...] | list[str]) -> list[str]:
    """The overrides without ``generator.KEY`` ones: those belong to the benchmarked generators (each cell's
    config checks them against its own), not to the default generator a generator-less config would build."""
    return [o for o in overrides if not o.startswith("generator.")]


def cell_config(plan: Plan, cell: Cell, threads: int) -> Config:
    """The run config of one cell: the generator's own layer, the plan's overrides, then the cell's fields."""
    # The profile's own budget, for every generator alike.
    base = resolve(profile=plan.profile, config_files=plan.config_files, overrides=core_overrides(plan.overrides))
    config = resolve(generator=cell.generator, profile=plan.profile, config_files=plan.config_files,
                     overrides=plan.overrides)
    return config.replace({
        **budget_settings(plan, base, cell.budget),  # equal budgets, whatever a generator's own file says
        "split.n_train_patients": cell.n_train, "split.draw": cell.draw, "seed": cell.seed,
        "evaluators.dice_gain.ratio": cell.ratio, "run.synthetic_ratio": max(cell.ratio, base.run.synthetic_ratio),
        # The cores are split between the jobs, unless the config fixes a count.
        "train.threads": config.train.threads or threads, **seg_cores(config, threads),
        **({"evaluators.dice_gain.modes": list(plan.modes)} if plan.modes else {}),
        **({"seg.augment": cell.augment} if cell.augment else {}),
    }, origin=f"benchmark cell {cell.name}")


def seg_cores(config: Config, threads: int) -> dict[str, Any]:
    """How a cell's U-Nets use its ``threads`` cores: that many 1-thread processes, unless the config says.

    One small U-Net trains as fast at 1 thread as at 2 (benchmarks/results/seg_speed.md), so a cell's
    arms x seeds U-Nets go ``threads`` at a time in 1-thread processes: the v2 design's 8 U-Nets per
    cell and level (12 U-Net trainings' worth of batches: add and its control forward two) took 745 s one
    by one at 2 threads (benchmark_v2.md); the same work in 2 x 1-thread processes took 396 s in the
    controls evaluation of seg_controls.md (6 add-mode U-Nets), 1.9x. Not yet timed inside a benchmark cell.
    """
    if config.seg.threads is not None or config.seg.processes != "auto":
        return {"seg.threads": config.seg.threads or threads}
    return {"seg.processes": threads, "seg.threads": None}


#: What to do about a damaged benchmark.json: the cells are runs and keep their results.
PLAN_FIX = ("Restore it (the same command wrote it), or run the benchmark under another --name; the finished cells "
            "under cells/ are runs and keep their results (`evaluate --run` scores one again)")


def check_plan(plan: Plan) -> None:
    """Fail before any work (and before an executor starts): unknown generators, bad settings, a bad budget."""
    for g in plan.generators:
        GENERATORS.get(g)  # an unknown name fails with the valid ones
    first_of_each = {c.generator: c for c in reversed(plan.cells())}.values()
    for cell in first_of_each:
        split = cell_config(plan, cell, 1).split  # a bad setting (a generator key included) fails
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


def extended_plan(saved: dict[str, Any], plan: Plan) -> Plan | None:
    """The plan that continues ``saved``: ``plan`` with the saved generators first; None if they differ otherwise.

    A benchmark grows without losing work: a generator added later (a new plugin, or one held back while
    its config changed) joins the same leaderboard, and more ``--draws`` or ``--seeds`` add cells (a cell's
    name and split depend on its own draw and seed, not on how many there are). The new cells share the
    baselines, the split design and the budget of the others, whose finished cells are kept. Fewer draws or
    seeds than saved would drop finished cells from the leaderboard: refused like any other change.
    """
    before = tuple(saved.get("generators", ()))
    merged = replace(plan, generators=(*before, *(g for g in plan.generators if g not in before)))
    grown = {k: getattr(merged, k) for k in ("draws", "seeds") if getattr(merged, k) > saved.get(k, 1)}
    if not _same_plan({**saved, "generators": list(merged.generators), **grown}, merged):
        return None
    if len(merged.generators) > len(before):
        log.info("benchmark: adding %s to the plan of %s (finished cells are kept)",
                 ", ".join(merged.generators[len(before):]), ", ".join(before))
    for k, v in grown.items():
        log.info("benchmark: %s %d -> %d (finished cells are kept)", k, saved.get(k, 1), v)
    return merged


def describe(plan: Plan) -> dict[str, Any]:
    return {"cells": len(plan.cells()), "generators": list(plan.generators), "regimes": list(plan.regimes),
            "ratios": list(plan.ratios), "draws": plan.draws, "seeds": plan.seeds,
            "budget": f"{plan.budget_seconds:g} s" if plan.budget == "seconds" and not plan.budgets else plan.budget,
            **({"budgets": [f"{b:g}" for b in plan.budgets]} if plan.budgets else {})}


def plan_fields(saved: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}

