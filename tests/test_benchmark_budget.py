"""train.max_seconds: the loop stops on a wall-clock budget (a fake clock, no sleeping) and resumes right."""

from __future__ import annotations

import pytest
import torch

import toolkit.train.loop as loop
from tests.conftest import make_slices
from toolkit.bench.plan import Cell, Plan, budget_settings, cell_config
from toolkit.config import ConfigError, resolve
from toolkit.registry import GENERATORS
from toolkit.settings import TrainSettings
from toolkit.train.checkpoint import load_checkpoint
from toolkit.train.loop import checkpoint_path, resume_state, train_generator
from toolkit.train.runlog import RunLog
from toolkit.train.sampling import make_sampler
from toolkit.train.seeding import seed_everything
from toolkit.types import DataSpec


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that only moves when a generator trains: 1 s per train_step."""
    now = {"t": 1000.0}
    monkeypatch.setattr(loop, "clock", lambda: now["t"])
    return now


def _train(run_dir, now, settings, resume=False):
    seed_everything(0)
    gen = GENERATORS.get("toy")(DataSpec(image_size=32), latent_dim=4)
    step_fn = gen.train_step

    def timed_step(batch, step):
        now["t"] += 1.0
        return step_fn(batch, step)

    gen.train_step = timed_step
    data = make_slices()
    runlog = RunLog(run_dir, quiet=True)
    try:
        summary = train_generator(gen, data, settings, run_dir, runlog, make_sampler(gen, data), progress=False,
                                  state=resume_state(run_dir) if resume else None)
    finally:
        runlog.close()
    return summary, gen


def test_the_loop_stops_after_the_step_that_crosses_the_budget(tmp_path, fake_clock):
    cfg = TrainSettings(steps=20, batch_size=4, log_every=5, sample_every=100, checkpoint_every=10, max_seconds=3.5)
    summary, gen = _train(tmp_path, fake_clock, cfg)
    assert summary["steps_done"] == 4 and summary["trained_steps"] == 4 and summary["steps"] == 20
    assert summary["stopped"] == "max_seconds" and summary["max_seconds"] == 3.5
    assert summary["seconds"] == pytest.approx(4.0) and summary["total_seconds"] == pytest.approx(4.0)
    state = load_checkpoint(checkpoint_path(tmp_path))
    assert state["step"] == 4 and state["train_seconds"] == pytest.approx(4.0)  # not the periodic step 10
    assert torch.equal(state["generator"]["net"]["weight"], gen.net.state_dict()["weight"])
    assert "max_seconds=3.5: stopped after step 4 of 20" in (tmp_path / "log.txt").read_text()
    # Without a budget the same settings run every step.
    full, _ = _train(tmp_path / "full", fake_clock, TrainSettings(steps=6, batch_size=4, max_seconds=None))
    assert full["steps_done"] == 6 and full["stopped"] == "steps"


def test_resume_counts_the_seconds_already_spent_and_continues_exactly(tmp_path, fake_clock):
    cfg = TrainSettings(steps=20, batch_size=4, log_every=2, sample_every=100, checkpoint_every=10, max_seconds=3)
    first, _ = _train(tmp_path / "cut", fake_clock, cfg)
    assert first["steps_done"] == 3
    # The budget is spent: a resume trains no further step.
    again, _ = _train(tmp_path / "cut", fake_clock, cfg, resume=True)
    assert again["steps_done"] == 3 and again["trained_steps"] == 0 and again["stopped"] == "max_seconds"
    # A larger budget continues from step 3 and ends where a run straight to that budget ends, bit for bit.
    longer = TrainSettings(**{**cfg.__dict__, "max_seconds": 6})
    resumed, gen_resumed = _train(tmp_path / "cut", fake_clock, longer, resume=True)
    straight, gen_straight = _train(tmp_path / "straight", fake_clock, longer)
    assert resumed["resumed_from"] == 3 and resumed["steps_done"] == straight["steps_done"] == 6
    assert resumed["total_seconds"] == pytest.approx(6.0)
    for a, b in zip(gen_resumed.net.parameters(), gen_straight.net.parameters()):
        assert torch.equal(a, b)


def test_max_seconds_is_a_checked_core_setting():
    assert resolve(profile="smoke").train.max_seconds is None
    assert resolve(profile="smoke", overrides=("train.max_seconds=90",)).train.max_seconds == 90
    with pytest.raises(ConfigError, match="train.max_seconds"):
        resolve(profile="smoke", overrides=("train.max_seconds=0",))


def test_benchmark_budgets_set_steps_or_seconds_for_every_cell():
    base = resolve(profile="smoke")
    steps = Plan(("toy",), (2,), (1.0,), 1, 1, "smoke")
    assert budget_settings(steps, base) == {"train.steps": base.train.steps, "train.max_seconds": None}
    seconds = Plan(("toy", "deformed_real"), (2,), (1.0,), 1, 1, "smoke", budget="seconds", budget_seconds=12.0)
    for g in seconds.generators:
        config = cell_config(seconds, Cell(g, 2, 1.0, 0, 0), threads=1)
        assert config.train.max_seconds == 12.0 and config.train.steps >= 1_000_000
    with pytest.raises(ValueError, match="--budget-seconds"):
        budget_settings(Plan(("toy",), (2,), (1.0,), 1, 1, "smoke", budget="seconds"), base)
