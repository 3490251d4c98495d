"""``benchmark``: every generator through the whole chain, per cell, ranked on one leaderboard.

By job: :mod:`~toolkit.bench.plan` (cells, their configs, the checks before any
work), :mod:`~toolkit.bench.cells` (one task in a worker: a cell's run, a
re-scoring, baselines), :mod:`~toolkit.bench.executors` (local pool, Ray),
:mod:`~toolkit.bench.run` (the driver), :mod:`~toolkit.bench.leaderboard`
(rows: aggregation, bootstrap), :mod:`~toolkit.bench.report` (the files, plots, validity section) and :mod:`~toolkit.bench.design` (``--plan``).
"""

from toolkit.bench.cells import WorkerSetup, is_finished
from toolkit.bench.design import estimate_plan, format_estimate
from toolkit.bench.executors import RayMissing, make_executor, ray_installed
from toolkit.bench.plan import Cell, Plan, cell_config, check_plan, core_overrides, describe
from toolkit.bench.run import CellsFailed, run_benchmark

__all__ = ["Cell", "CellsFailed", "Plan", "RayMissing", "WorkerSetup", "cell_config", "check_plan", "core_overrides",
           "describe",
           "estimate_plan", "format_estimate", "is_finished", "make_executor", "ray_installed", "run_benchmark"]
