"""Evaluation dimensions of ``benchmark``: usage modes and augmentation levels share one trained generator."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_benchmark import ARGS

from cli import main
from toolkit.bench.leaderboard import BASELINE


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("bench"), tmp_path_factory.mktemp("cache")
    args = [a for a in ARGS]
    args[args.index("--generators") + 1] = "deformed_real"
    args[args.index("--draws") + 1] = "1"
    args += ["--modes", "add,replace", "--seg-augment", "standard,none", "--out", str(out), "--name", "m"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANSEG_CACHE", str(cache))
        import toolkit.experiment as experiment

        calls = []
        real_train = experiment.train_generator
        mp.setattr(experiment, "train_generator", lambda *a, **k: calls.append(1) or real_train(*a, **k))
        result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"dir": out / "m", "trainings": len(calls), "output": result.output, "args": args}


def test_every_mode_and_level_is_a_row_and_the_generator_trained_once(bench):
    assert bench["trainings"] == 1  # one cell trained; the other level re-scored its synthetic set
    rows = json.loads((bench["dir"] / "leaderboard.json").read_text())["rows"]
    scored = {(r["seg_augment"], r["mode"]) for r in rows if r["generator"] == "deformed_real"}
    assert scored == {("standard", "add"), ("standard", "replace"), ("none", "add"), ("none", "replace")}
    assert {(r["seg_augment"], r["mode"]) for r in rows if r["generator"] == BASELINE} == scored
    assert (bench["dir"] / "plots" / "gain_by_mode_n2_r1.png").is_file()


def test_a_rescored_cell_holds_no_checkpoint_and_its_own_level(bench):
    cells = bench["dir"] / "cells"
    trained, rescored = cells / "deformed_real-n2-r1-d0-s0", cells / "deformed_real-n2-r1-d0-s0-anone"
    assert (trained / "checkpoints").is_dir() and not (rescored / "checkpoints").exists()
    results = json.loads((rescored / "results.json").read_text())
    assert results["settings"]["seg"]["augment"] == "none" and results["rescored_from"] == trained.name
    assert json.loads((trained / "results.json").read_text())["settings"]["seg"]["augment"] == "standard"
    # Both levels score the same synthetic set, against their own baselines.
    values = [json.loads((c / "results.json").read_text())["evaluation"]["dice_gain"]["values"]
              for c in (trained, rescored)]
    assert values[0]["dice_baseline"] != values[1]["dice_baseline"]


def test_unknown_modes_and_levels_are_refused_before_any_work(tmp_path):
    for option, value in (("--modes", "add,mixup"), ("--seg-augment", "heavy")):
        result = CliRunner().invoke(main, [*ARGS, option, value, "--out", str(tmp_path)])
        assert result.exit_code != 0 and value.split(",")[-1] in result.output and "valid" in result.output
        assert not any(tmp_path.iterdir())


def test_an_archived_benchmark_with_rescored_levels_is_kept_whole(bench, tmp_path, monkeypatch):
    """An archive holds no synthetic set: its re-scored cells are finished evidence, not stale copies."""
    import shutil

    import toolkit.bench.cells as cells

    archived = tmp_path / "m"
    assert CliRunner().invoke(main, ["archive", str(bench["dir"]), str(archived)]).exit_code == 0
    assert (archived / "cells" / "deformed_real-n2-r1-d0-s0-anone" / "dice_gain" / "per_patient.csv").is_file()
    out = tmp_path / "out"
    shutil.copytree(archived, out / "m")
    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path / "fresh-cache"))
    calls = []
    for work in ("evaluate_run", "run_experiment", "train_baselines"):  # nothing is trained or scored again
        monkeypatch.setattr(cells, work, lambda *a, _w=work, **k: calls.append(_w))
    result = CliRunner().invoke(main, [*bench["args"][:-4], "--out", str(out), "--name", "m"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert calls == []
    before = json.loads((bench["dir"] / "leaderboard.json").read_text())["rows"]
    after = json.loads((out / "m" / "leaderboard.json").read_text())["rows"]
    assert [(r["generator"], r["mode"], r["seg_augment"], r["dice_gain"]) for r in after] == \
        [(r["generator"], r["mode"], r["seg_augment"], r["dice_gain"]) for r in before]
