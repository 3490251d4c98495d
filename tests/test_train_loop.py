from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from tests.conftest import make_slices
from toolkit.io import WriteError
from toolkit.registry import GENERATORS
from toolkit.settings import TrainSettings
from toolkit.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from toolkit.train.loop import (
    TrainingDiverged,
    TrainingInterrupted,
    batch_indices,
    checkpoint_path,
    resume_state,
    train_generator,
)
from toolkit.train.runlog import RunLog
from toolkit.train.sampling import make_sampler
from toolkit.train.seeding import rng_state, seed_everything, set_rng_state
from toolkit.types import DataSpec

CFG = TrainSettings(steps=6, batch_size=4, log_every=2, sample_every=3, checkpoint_every=3)


def toy(size=32):
    seed_everything(0)
    return GENERATORS.get("toy")(DataSpec(image_size=size), latent_dim=4)


def test_batch_indices_cover_each_epoch_and_shard_by_rank():
    n, bs = 10, 4
    rows = torch.cat([batch_indices(s, n, bs, seed=1) for s in range(5)])  # 20 rows = 2 epochs
    assert sorted(rows[:10].tolist()) == list(range(10))
    assert sorted(rows[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(3, n, bs, seed=1), batch_indices(3, n, bs, seed=1))
    assert not torch.equal(batch_indices(0, n, bs, seed=1), batch_indices(0, n, bs, seed=2))
    r0, r1 = batch_indices(0, 8, 4, seed=0, rank=0, world_size=2), batch_indices(0, 8, 4, seed=0, rank=1, world_size=2)
    assert sorted(torch.cat([r0, r1]).tolist()) == list(range(8))


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    gen = toy()
    step_fn = gen.train_step
    after = {}  # the weights after each step

    def train_step(batch, step):
        if step == 4:
            return {"loss_g": float("nan")}
        out = step_fn(batch, step)
        after[step] = {k: v.clone() for k, v in gen.net.state_dict().items()}
        return out

    gen.train_step = train_step
    data = make_slices()
    runlog = RunLog(tmp_path, quiet=True)
    with pytest.raises(TrainingDiverged) as info:
        train_generator(gen, data, CFG, tmp_path, runlog, make_sampler(gen, data), progress=False)
    message = str(info.value)
    assert "step 4" in message and "'loss_g'" in message and "nan" in message and "last.pt" in message
    state = load_checkpoint(checkpoint_path(tmp_path))
    assert state["step"] == 3
    fresh = toy()
    fresh.load_state_dict(state["generator"])
    # The weights after steps 0-2 (the checkpoint of step 3), not those after step 3, the one before the NaN.
    assert all(torch.equal(v, after[2][k]) for k, v in fresh.net.state_dict().items())
    assert not torch.equal(fresh.net.weight, after[3]["weight"])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(WriteError, match=r"cannot write .*last.pt: disk full; the previous file .* is unchanged"):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(path.parent) == ["last.pt"], "temporary files must not be left behind"


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="last.pt cannot be loaded"):
        load_checkpoint(bad)
    # A file holding objects other than plain weights: refused, never unpickled, never "use weights_only=False".
    torch.save({"step": 1, "thing": Path("x")}, tmp_path / "objects.pt")
    with pytest.raises(CheckpointError, match="objects other than plain weights") as info:
        load_checkpoint(tmp_path / "objects.pt")
    assert "weights_only=False" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_rng_state_round_trip():
    import random

    import numpy as np

    seed_everything(5)
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_tensorboard_events_hold_scalars_grids_and_histograms(tmp_path):
    gen = toy()
    step_fn = gen.train_step
    losses = []  # what each step returned
    gen.train_step = lambda batch, step: losses.append(step_fn(batch, step)["loss"]) or {"loss": losses[-1]}
    data = make_slices()
    writer = SummaryWriter(str(tmp_path))
    runlog = RunLog(tmp_path, writer, quiet=True)
    train_generator(gen, data, CFG, tmp_path, runlog, make_sampler(gen, data), progress=False)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert "loss/loss" in tags["scalars"]
    assert [e.step for e in events.Scalars("loss/loss")] == [2, 4, 6]
    # Each point is the mean loss over its log window (log_every 2): steps 0-1, 2-3, 4-5.
    windows = [sum(losses[i:i + 2]) / 2 for i in (0, 2, 4)]
    assert [e.value for e in events.Scalars("loss/loss")] == pytest.approx(windows, rel=1e-6)  # float32 in the file
    assert losses[0] != losses[1]  # so a window's first or last loss alone would not match
    assert "samples/real_vs_synthetic" in tags["images"]
    image = events.Images("samples/real_vs_synthetic")[-1]
    assert image.step == 6 and image.width > image.height  # real grid left, synthetic right
    assert {"mask_area/real", "mask_area/synthetic"} <= set(tags["histograms"])


def test_sigint_finishes_the_step_writes_a_checkpoint_and_resumes_exactly(tmp_path, request):
    # Python's own Ctrl-C handler, as in a terminal (a shell's background job starts with SIGINT ignored).
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, original))
    cfg = TrainSettings(steps=8, batch_size=4, log_every=2, sample_every=100, checkpoint_every=4)
    data = make_slices()

    def run(run_dir, interrupt_at=None, resume=False):
        gen = toy()
        step_fn = gen.train_step

        def train_step(batch, step):
            out = step_fn(batch, step)
            if step == interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does, in the middle of step 4
                assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a second Ctrl-C stops at once
            return out

        gen.train_step = train_step
        runlog = RunLog(run_dir, quiet=True)
        try:
            return train_generator(gen, data, cfg, run_dir, runlog, make_sampler(gen, data), progress=False,
                                   state=resume_state(run_dir) if resume else None)
        finally:
            runlog.close()

    before = signal.getsignal(signal.SIGINT)
    run(tmp_path / "straight")
    with pytest.raises(TrainingInterrupted, match="SIGINT: training stopped after step 5 of 8.*--resume"):
        run(tmp_path / "killed", interrupt_at=4)
    assert signal.getsignal(signal.SIGINT) is before
    assert load_checkpoint(checkpoint_path(tmp_path / "killed"))["step"] == 5  # not the periodic step 4
    assert run(tmp_path / "killed", resume=True)["resumed_from"] == 5

    def losses(run_dir):
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")  # the cut log window was kept


def test_progress_off_a_terminal_is_a_plain_line_every_tenth_of_the_steps(tmp_path, capsys):
    gen = toy()
    data = make_slices()
    runlog = RunLog(tmp_path, quiet=False)
    cfg = TrainSettings(steps=20, batch_size=4, log_every=5, sample_every=100, checkpoint_every=100)
    train_generator(gen, data, cfg, tmp_path, runlog, make_sampler(gen, data), progress=True)
    runlog.close()
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if line.startswith("train: step")]
    assert [line.split()[2] for line in lines] == [f"{s}/20" for s in range(2, 21, 2)]
    assert "\r" not in out.err and "step/s" not in out.err  # no tqdm redraws in a log
