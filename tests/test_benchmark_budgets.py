"""A budget dimension (--train-steps): nested cells continue the shorter one's checkpoint; one row per budget."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main
from toolkit.bench.leaderboard import BASELINE
from toolkit.bench.plan import Cell, Plan, cell_config
from toolkit.experiment import run_experiment

ARGS = ["benchmark", "--profile", "smoke", "--generators", "toy", "--train-patients", "2", "--draws", "1",
        "--seeds", "1", "--jobs", "1", "--train-steps", "4,8", "--set", "run.evaluators=[dice_gain]",
        "--set", "evaluators.dice_gain.tstr=false", "--set", "train.threads=1",
        "--set", "data.phantom_patients=10", "--set", "split.train_pool=4", "--set", "split.test_patients=rest"]


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("budgets"), tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANSEG_CACHE", str(cache))
        result = CliRunner().invoke(main, [*ARGS, "--out", str(out), "--name", "b"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        plan = Plan(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in json.loads((out / "b" / "benchmark.json").read_text())["plan"].items()})
        # The same training as the 8-step cell, uninterrupted, in a run of its own (no evaluation).
        config = cell_config(plan, Cell("toy", 2, 1.0, 0, 0, budget=8), 1).replace({"run.evaluators": []})
        straight = run_experiment(config, out=out, name="straight", progress=False, quiet=True)
    return {"dir": out / "b", "straight": straight, "output": result.output}


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_the_longer_budget_continues_the_shorter_cell_instead_of_training_again(nested):
    cells = nested["dir"] / "cells"
    short, long = _results(cells / "toy-n2-r1-d0-s0-t4"), _results(cells / "toy-n2-r1-d0-s0-t8")
    assert short["train"]["trained_steps"] == 4 and short["train"]["resumed_from"] == 0
    assert long["train"]["resumed_from"] == 4 and long["train"]["trained_steps"] == 4  # 4 steps were not retrained
    assert long["train"]["steps_done"] == 8
    # Each budget sampled its own synthetic set and was scored on its own.
    assert (cells / "toy-n2-r1-d0-s0-t8" / "synthetic" / "synthetic.npz").is_file()
    assert "values" in long["evaluation"]["dice_gain"]


def test_the_continued_cell_equals_an_uninterrupted_run_of_the_same_steps(nested):
    long = _results(nested["dir"] / "cells" / "toy-n2-r1-d0-s0-t8")["train"]
    straight = _results(nested["straight"])["train"]
    assert straight["trained_steps"] == 8 and straight["resumed_from"] == 0
    assert long["losses"] and long["losses"] == straight["losses"]
    logged = [json.loads(line) for line in (nested["dir"] / "cells" / "toy-n2-r1-d0-s0-t8" / "metrics.jsonl")
              .read_text().splitlines()]
    reference = [json.loads(line) for line in (nested["straight"] / "metrics.jsonl").read_text().splitlines()]

    def losses(rows):
        return [(r["step"], r["loss/loss"]) for r in rows if "loss/loss" in r]
    assert losses(logged) == losses(reference) and len(losses(logged)) == 4  # the whole curve, steps 2 ... 8


def test_the_leaderboard_has_one_row_per_budget_and_the_budget_curves(nested):
    d = nested["dir"]
    data = json.loads((d / "leaderboard.json").read_text())
    rows = [r for r in data["rows"] if r["generator"] == "toy"]
    assert sorted(r["budget"] for r in rows) == [4.0, 8.0]
    assert sorted(r["train_steps"] for r in rows) == [4, 8]
    assert any(r["generator"] == BASELINE for r in data["rows"])
    md = (d / "leaderboard.md").read_text()
    assert " budget |" in md and "to each of 4, 8 steps, nested" in md
    for stem in ("gain_vs_budget", "label_fidelity_vs_budget"):
        assert (d / "plots" / f"{stem}_n2_r1.png").is_file()
        assert data["meta"]["plots"][f"{stem}_n2_r1.png"]["series"] == ["toy"]


def test_budgets_must_increase(tmp_path):
    args = [a if a != "4,8" else "8,4" for a in ARGS]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path), "--name", "x"])
    assert result.exit_code != 0 and "increasing" in result.output and not (tmp_path / "x").exists()
