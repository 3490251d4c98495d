"""A failing benchmark cell: named with its log, the other cells go on, nothing finished is lost."""

from __future__ import annotations

import json
import textwrap

from click.testing import CliRunner

from cli import main
from tests.test_benchmark import ARGS

FLAKY = '''
import os

from toolkit.registry import GENERATORS


@GENERATORS.register("flaky")
class Flaky(GENERATORS.get("toy")):
    """The toy generator, with a bug at step 2 until $FLAKY_FIXED names an existing file."""

    def train_step(self, batch, step):
        if step == 2 and not os.path.exists(os.environ["FLAKY_FIXED"]):
            raise RuntimeError("flaky: the bug at step 2")
        return super().train_step(batch, step)
'''


def test_a_failing_cell_is_named_the_others_finish_and_the_same_command_continues(tmp_path, monkeypatch):
    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path / "cache"))
    fixed = tmp_path / "fixed"
    monkeypatch.setenv("FLAKY_FIXED", str(fixed))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "flaky.py").write_text(textwrap.dedent(FLAKY))
    args = [*[a if a != "toy,deformed_real" else "flaky,toy" for a in ARGS], "--draws", "1",
            "--set", "train.checkpoint_every=1", "--plugins", str(plugins), "--out", str(tmp_path), "--name", "b"]
    cells = tmp_path / "b" / "cells"

    first = CliRunner().invoke(main, args)
    assert first.exit_code == 1, first.output
    error = first.output[first.output.index("Error: "):]
    assert error.startswith("Error: benchmark: 1 of 2 cells failed; the 1 finished cells are in ")
    assert "flaky-n2-r1-d0-s0: generator 'flaky': train_step raised RuntimeError at step 2 (a bug" in error
    log_text = (cells / 'flaky-n2-r1-d0-s0' / 'log.txt').read_text()
    assert 'Traceback (most recent call last)' in log_text and 'flaky: the bug at step 2' in log_text
    assert f"(traceback: {cells / 'flaky-n2-r1-d0-s0' / 'log.txt'})" in error and "run the same command again" in error
    assert "Traceback" not in first.output
    toy_results = cells / "toy-n2-r1-d0-s0" / "results.json"
    assert "dice_gain" in json.loads(toy_results.read_text())["evaluation"]  # the other cell went on and finished
    rows = json.loads((tmp_path / "b" / "leaderboard.json").read_text())["rows"]
    assert {r["generator"] for r in rows} == {"toy", "(real only: baseline)"}  # a leaderboard of what finished
    assert (cells / "flaky-n2-r1-d0-s0" / "checkpoints" / "last.pt").is_file()  # the last good checkpoint stays
    toy_mtime = toy_results.stat().st_mtime_ns

    fixed.touch()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert toy_results.stat().st_mtime_ns == toy_mtime  # the finished cell is kept, not rerun
    flaky = json.loads((cells / "flaky-n2-r1-d0-s0" / "results.json").read_text())
    assert flaky["train"]["resumed_from"] == 2 and flaky["train"]["steps_done"] == 4
    rows = json.loads((tmp_path / "b" / "leaderboard.json").read_text())["rows"]
    assert {r["generator"] for r in rows} == {"toy", "flaky", "(real only: baseline)"}
