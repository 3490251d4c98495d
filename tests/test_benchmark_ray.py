"""The Ray executor for real: a local Ray instance with 2 CPUs runs tiny smoke cells, and its leaderboard
equals the local executor's for the same cells. Deselected by default (Ray's start and its workers' imports
take most of a minute on 2 cores); CI runs it with ``pytest -m ray`` after installing the ``ray`` extra."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TOY_PLUGINS
from toolkit.bench import Plan, make_executor, run_benchmark
from toolkit.bench.executors import ray_runtime_env
from toolkit.bench.leaderboard import BASELINE

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

PLAN = Plan(generators=("toy", "deformed_real"), regimes=(2,), ratios=(1.0,), draws=2, seeds=1, profile="smoke",
            overrides=("run.evaluators=[dice_gain]", "evaluators.dice_gain.tstr=false", "train.threads=1",
                       "data.phantom_patients=10", "split.train_pool=4", "split.test_patients=rest"))
TIMING = {"train_seconds", "sample_seconds_per_100", "samples_per_second"}  # what differs between two runs


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANSEG_CACHE", str(tmp_path_factory.mktemp("cache-local")))
        local = run_benchmark(PLAN, out=out, name="local", jobs=1)
        mp.setenv("GANSEG_CACHE", str(tmp_path_factory.mktemp("cache-ray")))  # the Ray run trains its own baselines
        ray.init(num_cpus=2, include_dashboard=False, runtime_env=ray_runtime_env())
        try:
            remote = run_benchmark(PLAN, out=out, name="ray", executor=make_executor("ray", jobs=2),
                                   plugins=[str(TOY_PLUGINS)])
            mtimes = {p.parent.name: p.stat().st_mtime_ns for p in (remote / "cells").glob("*/results.json")}
            first = _board(remote)
            # The driver died after the cells were written: the same call on Ray keeps every finished cell.
            again = run_benchmark(PLAN, out=out, name="ray", executor=make_executor("ray", jobs=2),
                                  plugins=[str(TOY_PLUGINS)])
        finally:
            ray.shutdown()
    return {"local": _board(local), "ray": first, "dir": remote, "again": _board(again), "mtimes": mtimes}


def _board(bench):
    return json.loads((bench / "leaderboard.json").read_text())


def test_ray_cells_give_the_local_leaderboard(benchmarks):
    local, remote = benchmarks["local"], benchmarks["ray"]
    assert len(remote["rows"]) == len(local["rows"]) == 3
    for a, b in zip(local["rows"], remote["rows"]):
        same = [json.dumps({k: v for k, v in row.items() if k not in TIMING}) for row in (a, b)]  # NaN == NaN
        assert same[0] == same[1]
        assert a["generator"] == BASELINE or a["dice_gain"] != 0
    assert remote["meta"]["baselines_trained"] == local["meta"]["baselines_trained"] == 2  # on Ray too
    assert len(list((benchmarks["dir"] / "cells").glob("*/results.json"))) == 4


def test_a_rerun_on_ray_keeps_the_finished_cells(benchmarks):
    mtimes = {p.parent.name: p.stat().st_mtime_ns for p in (benchmarks["dir"] / "cells").glob("*/results.json")}
    assert mtimes == benchmarks["mtimes"] and len(mtimes) == 4
    assert benchmarks["again"]["meta"]["baselines_trained"] == 0
    assert benchmarks["again"]["rows"] == benchmarks["ray"]["rows"] or \
        json.dumps(benchmarks["again"]["rows"]) == json.dumps(benchmarks["ray"]["rows"])
