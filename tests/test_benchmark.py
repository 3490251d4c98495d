"""The benchmark command on the smoke profile with the test-only toy generator and the deformed_real control."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from toolkit.bench.leaderboard import BASELINE, hierarchical_bootstrap
from toolkit.runtime import machine_threads

ARGS = ["benchmark", "--profile", "smoke", "--generators", "toy,deformed_real", "--train-patients", "2",
        "--draws", "2", "--seeds", "1", "--jobs", "1", "--set", "run.evaluators=[dice_gain]",
        "--set", "evaluators.dice_gain.tstr=false", "--set", "train.threads=1",
        "--set", "data.phantom_patients=10", "--set", "split.train_pool=4", "--set", "split.test_patients=rest"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANSEG_CACHE", str(cache))
        first = CliRunner().invoke(main, [*ARGS, "--out", str(out), "--name", "b"], catch_exceptions=False)
        assert first.exit_code == 0, first.output
        mtimes = {p.parent.name: p.stat().st_mtime_ns for p in (out / "b" / "cells").glob("*/results.json")}
        meta = json.loads((out / "b" / "leaderboard.json").read_text())["meta"]
        again = CliRunner().invoke(main, [*ARGS, "--out", str(out), "--name", "b"], catch_exceptions=False)
    return {"dir": out / "b", "first": first.output, "again": again, "mtimes": mtimes, "meta": meta, "cache": cache}


def test_leaderboard_files_hold_every_generator_and_the_baseline(bench):
    d = bench["dir"]
    data = json.loads((d / "leaderboard.json").read_text())
    rows = data["rows"]
    assert {(r["generator"], r["n_train_patients"]) for r in rows} == {
        (g, 2) for g in ("toy", "deformed_real", BASELINE)}
    for r in rows:
        if r["generator"] != BASELINE:
            assert r["ci_low"] <= r["dice_gain"] <= r["ci_high"] and r["draws"] == 2 and r["mde80"] > 0
    with open(d / "leaderboard.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    md = (d / "leaderboard.md").read_text()
    assert "deformed_real" in md and "hierarchical bootstrap" in md and "(real only: baseline)" in md
    steps = data["meta"]["train_steps"]  # the budget line names the profile's steps, whichever row ranks first
    assert isinstance(steps, int) and steps > 0 and f"every generator trained {steps} steps" in md
    assert (d / "plots" / "gain_n2_r1.png").is_file()
    # Which cheap metric predicts the gain: 4 cells at one augmentation level, so a table with its files.
    assert "## Which cheap metric predicts the gain" in md and "### seg.augment standard (4 cells)" in md
    assert "label_fidelity_dice" in md.split("## Which cheap metric")[1]
    assert data["meta"]["validity"] == {"standard": {"cells": 4, "folder": "validity/standard"}}
    assert (d / "validity" / "standard" / "validity.csv").is_file()


def test_leaderboard_shows_budgets_throughput_and_quality_columns(bench):
    d = bench["dir"]
    md = (d / "leaderboard.md").read_text()
    for column in ("precision_seg", "recall_seg", "msssim_gap", "train s", "steps done", "samples/s"):
        assert f" {column} |" in md
    rows = json.loads((d / "leaderboard.json").read_text())["rows"]
    for r in rows:
        if r["generator"] != BASELINE:
            assert r["train_steps"] == 4 and r["train_steps_done"] == 4 and r["train_max_seconds"] is None
            assert r["samples_per_second"] > 0 and r["train_seconds"] > 0
    with open(d / "leaderboard.csv") as f:
        first = next(csv.DictReader(f))
    assert {"train_steps_done", "samples_per_second", "precision_seg", "recall_seg", "msssim_gap"} <= set(first)
    meta = json.loads((d / "leaderboard.json").read_text())["meta"]
    assert meta["plots"] == {"gain_n2_r1.png": {"kind": "gain", "n_train_patients": 2, "ratio": 1.0}}
    assert list((d / "tensorboard").glob("events.out.tfevents.*"))


def test_executor_ray_without_ray_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    import toolkit.bench as benchmark
    import toolkit.bench.executors as executors

    monkeypatch.setattr(benchmark, "ray_installed", lambda: False)
    result = CliRunner().invoke(main, [*ARGS, "--executor", "ray", "--out", str(tmp_path), "--name", "r"])
    assert result.exit_code != 0 and 'pip install -e ".[ray]"' in result.output
    assert not (tmp_path / "r").exists()
    with pytest.raises(benchmark.RayMissing, match=r"pip install -e \"\.\[ray\]\""):
        monkeypatch.setattr(executors, "ray_installed", lambda: False)
        benchmark.make_executor("ray")


def test_budget_options_are_checked(tmp_path):
    result = CliRunner().invoke(main, [*ARGS, "--budget", "seconds", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--budget-seconds" in result.output
    result = CliRunner().invoke(main, [*ARGS, "--budget-seconds", "5", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--budget seconds" in result.output


def test_baselines_are_trained_once_per_regime_and_draw(bench):
    assert bench["meta"]["baselines_trained"] == 1 * 2 * 1  # regimes x draws x U-Net seeds (smoke: 1)
    again = json.loads((bench["dir"] / "leaderboard.json").read_text())["meta"]
    assert again["baselines_trained"] == 0  # the resumed benchmark found them all in the cache
    for results in (bench["dir"] / "cells").glob("*/results.json"):
        assert json.loads(results.read_text())["evaluation"]["dice_gain"]["values"]["baselines_trained"] == 0


def test_a_resumed_benchmark_keeps_finished_cells(bench):
    assert bench["again"].exit_code == 0, bench["again"].output
    mtimes = {p.parent.name: p.stat().st_mtime_ns for p in (bench["dir"] / "cells").glob("*/results.json")}
    assert mtimes == bench["mtimes"] and len(mtimes) == 4


def test_a_cell_checkpoint_that_cannot_be_loaded_is_a_clear_error(bench, tmp_path, monkeypatch):
    """Resuming an unfinished cell whose checkpoint does not load names the file, without a traceback."""
    import shutil

    monkeypatch.setenv("GANSEG_CACHE", str(bench["cache"]))
    shutil.copytree(bench["dir"], tmp_path / "b")
    cell = sorted((tmp_path / "b" / "cells").glob("toy-*"))[0]
    (cell / "results.json").unlink()  # unfinished: the benchmark resumes it from its checkpoint
    (cell / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(main, [*ARGS, "--out", str(tmp_path), "--name", "b"])
    assert result.exit_code != 0 and "last.pt" in result.output, result.output
    assert "Traceback" not in result.output


def test_another_plan_in_the_same_folder_is_refused(bench, tmp_path):
    other = [a if a != "2" else "3" for a in ARGS]
    result = CliRunner().invoke(main, [*other, "--out", str(bench["dir"].parent), "--name", "b"])
    assert result.exit_code != 0 and "another benchmark plan" in result.output


def test_plan_from_a_finished_benchmark_measures_components_and_trains_nothing(bench, monkeypatch):
    monkeypatch.setenv("GANSEG_CACHE", str(bench["cache"]))  # the benchmark's data cache: no phantom to rebuild
    cells = sorted(p.name for p in (bench["dir"] / "cells").iterdir())
    result = CliRunner().invoke(main, [*ARGS, "--plan", "--from", str(bench["dir"]), "--target-effect", "0.05"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "target effect 0.05" in out and "| draws | seeds | cells | MDE80 | estimated wall time |" in out
    assert "var_draw" in out and "measured on 2 generator rows of the benchmark" in out  # 2 draws: measured
    assert "var_gen_seed" in out and "default (assumed" in out  # 1 seed: cannot be measured there
    assert "finished cells of" in out and "Nothing was trained" in out
    assert sorted(p.name for p in (bench["dir"] / "cells").iterdir()) == cells


def test_plan_without_from_uses_the_defaults_and_times_this_machine(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("GANSEG_CACHE", str(bench["cache"]))
    args = [a if a != "b" else "p" for a in ARGS]
    result = CliRunner().invoke(main, [*args, "--plan", "--out", str(tmp_path), "--name", "p"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "default (measured" in result.output and "default (assumed" in result.output
    assert "ms per train_step" in result.output and "(timed here)" in result.output
    if machine_threads() >= 2:  # the segmenter was timed with the other core busy (a spawned contender)
        assert "beside 1 busy U-Net process(es)" in result.output
    assert "| 3 | 3 | 18 |" in result.output  # 2 generators x 3 draws x 3 seeds
    assert not (tmp_path / "p").exists()


def test_hierarchical_bootstrap_covers_draw_spread():
    rng = np.random.default_rng(0)
    # Draws differ by a lot, seeds and patients by little: the CI must reflect the draws.
    diff = rng.normal(0, 0.002, (4, 2, 3, 10)) + np.array([-0.05, 0.05, -0.04, 0.04])[:, None, None, None]
    low, high, se = hierarchical_bootstrap(diff, samples=1000)
    assert low < 0 < high and se > 0.015
    tight = rng.normal(0.03, 0.002, (4, 2, 3, 10))
    low, high, _ = hierarchical_bootstrap(tight, samples=1000)
    assert 0.02 < low < 0.03 < high < 0.04


def test_a_generator_added_later_joins_the_leaderboard_and_keeps_the_finished_cells(bench, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("GANSEG_CACHE", str(bench["cache"]))
    out = tmp_path / "out"
    shutil.copytree(bench["dir"], out / "b")
    before = {p.parent.name: p.stat().st_mtime_ns for p in (out / "b" / "cells").glob("*/results.json")}
    args = [a if a != "toy,deformed_real" else "vae" for a in ARGS]
    result = CliRunner().invoke(main, [*args, "--out", str(out), "--name", "b"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "b" / "cells").glob("*/results.json")}
    assert {k: after[k] for k in before} == before and sorted(set(after) - set(before)) == [
        "vae-n2-r1-d0-s0", "vae-n2-r1-d1-s0"]
    data = json.loads((out / "b" / "leaderboard.json").read_text())
    assert {r["generator"] for r in data["rows"]} == {"toy", "deformed_real", "vae", BASELINE}
    assert data["meta"]["baselines_trained"] == 0  # the added generator used the baselines of the others
    saved = json.loads((out / "b" / "benchmark.json").read_text())["plan"]
    assert saved["generators"] == ["toy", "deformed_real", "vae"]


@pytest.mark.slow  # trains a third draw's cells; CI runs it with -m slow
def test_more_draws_continue_a_benchmark_and_fewer_are_refused(bench, tmp_path, monkeypatch):
    """A benchmark grows by draws across sessions: the finished cells are kept, the new draw trains its own."""
    import shutil

    monkeypatch.setenv("GANSEG_CACHE", str(bench["cache"]))
    out = tmp_path / "out"
    shutil.copytree(bench["dir"], out / "b")
    before = {p.parent.name: p.stat().st_mtime_ns for p in (out / "b" / "cells").glob("*/results.json")}
    fewer = list(ARGS)
    fewer[ARGS.index("--draws") + 1] = "1"
    refused = CliRunner().invoke(main, [*fewer, "--out", str(out), "--name", "b"])
    assert refused.exit_code != 0 and "another benchmark plan" in refused.output
    more = list(ARGS)
    more[ARGS.index("--draws") + 1] = "3"
    result = CliRunner().invoke(main, [*more, "--out", str(out), "--name", "b"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "b" / "cells").glob("*/results.json")}
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == ["deformed_real-n2-r1-d2-s0", "toy-n2-r1-d2-s0"]
    data = json.loads((out / "b" / "leaderboard.json").read_text())
    assert all(r["draws"] == 3 for r in data["rows"] if r["generator"] != BASELINE)
    assert json.loads((out / "b" / "benchmark.json").read_text())["plan"]["draws"] == 3


def test_more_draws_than_different_training_sets_is_refused_before_any_work(tmp_path):
    draws = list(ARGS)
    draws[ARGS.index("--draws") + 1] = "7"  # 2 training patients of a pool of 4 make 6 sets
    result = CliRunner().invoke(main, [*draws, "--out", str(tmp_path), "--name", "x"])
    assert result.exit_code != 0 and "--draws 7: 2 training patients of a pool of split.train_pool=4 make " \
        "only 6 different training sets" in result.output
    assert not (tmp_path / "x").exists()


def test_a_finished_cell_whose_split_is_no_longer_its_draw_runs_again(bench, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bench["dir"], copy)
    cell = copy / "cells" / "toy-n2-r1-d1-s0"
    saved = json.loads((cell / "split.json").read_text())
    patients = saved["patients"]
    drawn = list(patients["train"])
    patients["train"], patients["unused"] = sorted([drawn[0], patients["unused"][0]]), \
        sorted([drawn[1], *patients["unused"][1:]])  # as if another rule had drawn this set
    (cell / "split.json").write_text(json.dumps(saved))
    before = {p.parent.name: p.stat().st_mtime_ns for p in (copy / "cells").glob("*/results.json")}
    monkeypatch.setenv("GANSEG_CACHE", str(bench["cache"]))
    result = CliRunner().invoke(main, [*ARGS, "--out", str(tmp_path), "--name", "b"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    after = {p.parent.name: p.stat().st_mtime_ns for p in (copy / "cells").glob("*/results.json")}
    assert [name for name in after if after[name] != before[name]] == ["toy-n2-r1-d1-s0"]
    assert json.loads((cell / "split.json").read_text())["patients"]["train"] == drawn


def test_draws_that_would_repeat_the_whole_data_pool_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path / "cache"))
    args = [a if a != "split.test_patients=rest" else "split.test_patients=4" for a in ARGS]
    args = [a if a != "split.train_pool=4" else "split.train_pool=null" for a in args]
    args[args.index("--train-patients") + 1] = "4"  # 10 phantom patients - 2 val - 4 test: all 4 left train
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path), "--name", "x"])
    assert result.exit_code == 1 and "split.draw=1: the training pool holds 4 patients" in result.output, result.output
    assert not (tmp_path / "x").exists()


def test_plan_counts_the_unets_of_every_mode_and_augmentation_level(bench, monkeypatch):
    import toolkit.bench.design as benchmark
    from toolkit.bench import Plan, estimate_plan

    monkeypatch.setenv("GANSEG_CACHE", str(bench["cache"]))
    monkeypatch.setattr(benchmark, "measure_unet_seconds", lambda *a: 10.0)  # fixed times: the arithmetic alone
    monkeypatch.setattr(benchmark, "measure_step_seconds", lambda *a: (0.0, 0.0))
    monkeypatch.setattr(benchmark, "machine_threads", lambda: 1)  # one core: no contenders, U-Nets one by one
    overrides = ("run.evaluators=[dice_gain]", "evaluators.dice_gain.tstr=false", "evaluators.dice_gain.seeds=2",
                 "data.phantom_patients=10", "split.train_pool=4", "split.test_patients=rest")

    def wall(modes=(), levels=(), control=False):
        extra = ("evaluators.dice_gain.compute_control=true",) if control else ()
        plan = Plan(("deformed_real",), (2,), (1.0,), 1, 1, "smoke", overrides=overrides + extra, modes=modes,
                    seg_augment=levels)
        rows = estimate_plan(plan, jobs=1)["rows"]
        return next(r for r in rows if r["this_plan"])["wall_seconds"]

    one = wall(("replace",))  # 2 U-Net seeds x (1 arm + the baseline) x 10 s
    assert one == pytest.approx(2 * 10 * 2)
    # replace 1 + pretrain 1 + add 2 (a real and a synthetic batch) + add_real 2, then the baseline, per level:
    assert wall(("add", "replace", "pretrain"), ("standard", "none"), control=True) == pytest.approx(2 * 2 * 10 * 7)


def test_plan_counts_nested_budgets_as_one_training_to_the_longest(bench, monkeypatch):
    import toolkit.bench.design as design
    from toolkit.bench import Plan, estimate_plan

    monkeypatch.setenv("GANSEG_CACHE", str(bench["cache"]))
    monkeypatch.setattr(design, "measure_unet_seconds", lambda *a: 10.0)
    monkeypatch.setattr(design, "measure_step_seconds", lambda *a: (1.0, 0.0))  # 1 s per generator step
    monkeypatch.setattr(design, "machine_threads", lambda: 1)
    overrides = ("run.evaluators=[dice_gain]", "evaluators.dice_gain.tstr=false", "evaluators.dice_gain.seeds=2",
                 "evaluators.dice_gain.modes=[replace]", "data.phantom_patients=10", "split.train_pool=4",
                 "split.test_patients=rest")

    def this_plan(budgets):
        plan = Plan(("deformed_real",), (2,), (1.0,), 1, 1, "smoke", overrides=overrides, budgets=budgets)
        return next(r for r in estimate_plan(plan, jobs=1)["rows"] if r["this_plan"])

    row = this_plan((4.0, 8.0, 16.0))
    # 16 training steps (not 4 + 8 + 16), 3 scorings of 2 seeds x 10 s, and the baselines (2 x 10 s).
    assert row["wall_seconds"] == pytest.approx(16 + 3 * 2 * 10 + 2 * 10) and row["cells"] == 3


def test_plan_wall_time_is_the_stages_makespans_with_every_timing_beside_busy_cores(bench, monkeypatch):
    """Two cores, --jobs 2: a stage ends with its last cell (not work / 2), the U-Nets of a cell go two at a
    time, and each timing runs while contenders keep the other core busy on the same work."""
    import toolkit.bench.design as design
    from toolkit.bench import Plan, estimate_plan
    from toolkit.bench.timing import makespan

    assert makespan([], 2) == 0 and makespan([5.0], 2) == 5
    assert makespan([10, 1, 1, 1], 2) == 10 and makespan([3, 3, 3], 2) == 6 and makespan([3, 3, 3], 1) == 9
    monkeypatch.setenv("GANSEG_CACHE", str(bench["cache"]))
    busy: list[tuple[int, str]] = []

    class FakeContenders:
        def __init__(self, n, threads, setup):
            self.n = n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def busy(self, what, config):
            busy.append((self.n, what if what == "unet" else config.run.generator))

    monkeypatch.setattr(design, "Contenders", FakeContenders)
    monkeypatch.setattr(design, "machine_threads", lambda: 2)
    monkeypatch.setattr(design, "measure_unet_seconds", lambda *a: 10.0)
    step_s = {"toy": 1.0, "deformed_real": 0.0}
    monkeypatch.setattr(design, "measure_step_seconds", lambda config, *a: (step_s[config.run.generator], 0.0))
    overrides = ("run.evaluators=[dice_gain]", "evaluators.dice_gain.tstr=false", "evaluators.dice_gain.seeds=2",
                 "evaluators.dice_gain.modes=[replace]", "data.phantom_patients=10", "split.train_pool=4",
                 "split.test_patients=rest", "seg.threads=null")  # the default's: U-Nets in 1-thread processes
    plan = Plan(("toy", "deformed_real"), (2,), (1.0,), 1, 1, "smoke", overrides=overrides, budgets=(40.0, 100.0))
    est = estimate_plan(plan, jobs=2)
    assert busy == [(1, "unet"), (1, "toy"), (1, "deformed_real")]
    assert est["unet_processes"] == 1 and est["threads_per_cell"] == 1
    row = next(r for r in est["rows"] if r["this_plan"])
    # Baselines: 1 task of 2 seeds x 10 s. Budget 40: toy 40 s + 20 s scoring beside deformed_real's 20 s;
    # budget 100: toy 60 more steps + 20 s. Not (20 + 60 + 20 + 80 + 20) / 2.
    assert row["wall_seconds"] == pytest.approx(20 + 60 + 80)
    # One job on the same two cores: each cell's two U-Nets go at once, no contender beside a generator.
    busy.clear()
    one = next(r for r in estimate_plan(plan, jobs=1)["rows"] if r["this_plan"])
    assert busy == [(1, "unet")]
    assert one["wall_seconds"] == pytest.approx(10 + (40 + 10 + 10) + (60 + 10 + 10))


def test_an_archive_keeps_the_evidence_only_and_continues_with_more_draws(bench, tmp_path, monkeypatch):
    """Cells survive a lost machine as an archive: copied back, more draws train only the new cells and the
    leaderboard pools the archived ones (their per-patient Dice) with them."""
    import shutil

    archived = tmp_path / "results" / "b"
    result = CliRunner().invoke(main, ["archive", str(bench["dir"]), str(archived)])
    assert result.exit_code == 0, result.output
    assert "archived 4 cells" in result.output
    files = {p.relative_to(archived).as_posix() for p in archived.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pt", ".npz")) or "tfevents" in f]  # nothing trained or sampled
    assert {"benchmark.json", "leaderboard.json", "archive.json", "cells/toy-n2-r1-d0-s0/dice_gain/per_patient.csv",
            "cells/toy-n2-r1-d0-s0/results.json", "cells/toy-n2-r1-d0-s0/split.json"} <= files
    # Continued on a "new machine": no checkpoints, an empty baseline cache.
    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path / "fresh-cache"))
    out = tmp_path / "out"
    shutil.copytree(archived, out / "b")
    more = list(ARGS)
    more[ARGS.index("--draws") + 1] = "3"
    grown = CliRunner().invoke(main, [*more, "--out", str(out), "--name", "b"], catch_exceptions=False)
    assert grown.exit_code == 0, grown.output
    data = json.loads((out / "b" / "leaderboard.json").read_text())
    assert data["meta"]["baselines_trained"] == 1  # only the new draw's: the archived draws need none
    assert all(r["draws"] == 3 for r in data["rows"] if r["generator"] != BASELINE)
    for name in ("toy-n2-r1-d0-s0", "deformed_real-n2-r1-d1-s0"):  # kept, not retrained
        assert (out / "b" / "cells" / name / "results.json").read_bytes() == \
            (archived / "cells" / name / "results.json").read_bytes()
    assert (out / "b" / "cells" / "toy-n2-r1-d2-s0" / "checkpoints" / "last.pt").is_file()
    # The grown benchmark refreshes its own archive; a folder that is not an archive is never replaced.
    again = CliRunner().invoke(main, ["archive", str(out / "b"), str(archived)])
    assert again.exit_code == 0 and "archived 6 cells" in again.output, again.output
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.md").write_text("mine")
    refused = CliRunner().invoke(main, ["archive", str(out / "b"), str(other)])
    assert refused.exit_code != 0 and "not an archive" in refused.output and (other / "keep.md").is_file()
    missing = CliRunner().invoke(main, ["archive", str(tmp_path), str(tmp_path / "x")])
    assert missing.exit_code != 0 and "no benchmark.json" in missing.output
