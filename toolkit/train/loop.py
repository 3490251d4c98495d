"""The generator training loop: seed, build, resume, loop, periodic maintenance.

Generators own networks, optimizers and losses; this loop owns data
iteration, device placement, logging, sample grids, checkpoints and timing.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from toolkit.data.slices import SliceSet
from toolkit.plugin import Generator, PluginCallError, plugin_name
from toolkit.runtime import Runtime
from toolkit.settings import TrainSettings
from toolkit.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from toolkit.train.distributed import DistInfo, average_gradients_before_step, broadcast_modules
from toolkit.train.runlog import RunLog
from toolkit.train.sampling import Sampler
from toolkit.train.seeding import rng_state, seed_everything, set_rng_state
from toolkit.train.visuals import pair_grid, side_by_side
from toolkit.types import Batch

CHECKPOINT_NAME = "last.pt"
GRID_SIZE = 32  # pairs per sample grid
clock = time.perf_counter  # the loop's clock (tests replace it to check the time budget without sleeping)


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training after a step; a checkpoint of that step was written."""


class StopRequests:
    """Turns the first SIGINT / SIGTERM into a request to stop after the current step.

    The loop then finishes the step, writes a checkpoint and raises
    :class:`TrainingInterrupted`, so nothing since the last periodic
    checkpoint is lost. The first signal puts the previous handlers back, so a
    second Ctrl-C stops at once. Only the main thread of a single process can
    install handlers; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequests:
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


def batch_indices(step: int, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Row indices of ``step``'s batch: epochs of seeded permutations, sharded by rank.

    A pure function of (seed, step), so a resumed run sees exactly the batches
    an uninterrupted one would, with no sampler state to save.
    """
    global_batch = batch_size * world_size
    start = step * global_batch + rank * batch_size
    positions = torch.arange(start, start + batch_size)
    epochs, offsets = positions // n, positions % n
    rows = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        sel = epochs == epoch
        rows[sel] = perm[offsets[sel]]
    return rows


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / CHECKPOINT_NAME


def resume_state(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The last checkpoint of a run (networks, optimizers, EMA, RNG states, step), or None if there is none.

    Read once per resume: the caller learns the step (e.g. for TensorBoard's
    purge step) and hands the same state to :func:`train_generator`.
    """
    ckpt = checkpoint_path(run_dir)
    return load_checkpoint(ckpt, map_location=map_location) if ckpt.exists() else None


def load_generator_state(gen: Generator, state: dict[str, Any], ckpt: Path) -> None:
    """Load a checkpoint's generator state, or raise CheckpointError naming the file and what differs.

    A run's settings can build other networks than the ones that wrote its
    checkpoint (a ``--set`` on resume, or a newer default the saved config.yaml
    does not mention); the generator's message says which.
    """
    try:
        gen.load_state_dict(state["generator"])
    except (KeyError, RuntimeError, ValueError) as exc:
        detail = exc.args[0] if exc.args else exc
        raise CheckpointError(f"{ckpt} does not fit the model these settings build: {detail}") from None


def train_generator(
    gen: Generator,
    train: SliceSet,
    settings: TrainSettings,
    run_dir: Path,
    runlog: RunLog,
    sampler: Sampler,
    seed: int = 0,
    state: dict[str, Any] | None = None,
    dist_info: DistInfo = DistInfo(),
    progress: bool = True,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Train ``gen`` on ``train`` for ``settings.steps`` steps, or until ``settings.max_seconds`` run out.

    The time budget counts training seconds over every resume (the checkpoint
    carries them); training stops after the step that crosses it, with a
    checkpoint of that step, and a resumed run whose budget is spent trains
    no further step.

    Args:
        state: a checkpoint from :func:`resume_state` to continue from, or None to start at step 0.
        runtime: precision and memory layout to train with (default: fp32, NCHW).

    Returns:
        A summary: steps asked and done (``steps_done``), why it stopped (``stopped``: steps |
        max_seconds), last logged losses, seconds (this session; ``total_seconds`` over resumes),
        steps per second.

    Raises:
        TrainingDiverged: a loss was NaN or inf (the message names step and loss).
        PluginCallError: the generator's train_step raised (its exception is the cause).
    """
    steps, batch_size = settings.steps, settings.batch_size
    log_every, sample_every, checkpoint_every = settings.log_every, settings.sample_every, settings.checkpoint_every
    if len(train) == 0:
        raise ValueError("no training slices: check data.slices and split settings")
    ckpt = checkpoint_path(run_dir)
    writer = runlog.writer
    gen_name = plugin_name(gen)

    # Build: precision and memory layout; every rank starts from rank 0's weights.
    channels_last = runtime is not None and runtime.channels_last
    gen.amp_dtype = None if runtime is None else runtime.amp_dtype
    if channels_last:
        for module in gen.modules().values():
            module.to(memory_format=torch.channels_last)
    if dist_info.enabled:
        broadcast_modules(gen.modules())
        hooks = average_gradients_before_step(gen.optimizers())

    # Resume: networks, optimizers, EMA and RNG states from the last checkpoint.
    start, spent = 0, 0.0
    if state is not None:
        load_generator_state(gen, state, ckpt)
        set_rng_state(state["rng"])
        start = int(state["step"])
        spent = float(state.get("train_seconds", 0.0))  # training seconds of the sessions before this one
        window = {k: list(v) for k, v in state.get("log_window", {}).items()}  # a log window the checkpoint cut
        if dist_info.rank > 0:
            # The checkpoint holds rank 0's RNG states; other ranks continue from their own seed.
            seed_everything(seed + dist_info.rank + 1_000_003 * start)
        runlog.truncate_after(start)
        runlog.info(f"resumed from {ckpt} at step {start}")
    else:
        seed_everything(seed + dist_info.rank)
        window = {}

    # Data lives on the device for the whole run: 2D slice sets are small.
    data = train.to_batch().to(gen.device)
    if channels_last:
        data.image = data.image.contiguous(memory_format=torch.channels_last)
        data.mask = data.mask.contiguous(memory_format=torch.channels_last)
    preview = torch.Generator().manual_seed(seed + 7)
    real = train.to_batch(torch.randperm(len(train), generator=preview)[:GRID_SIZE].numpy())
    if writer is not None and dist_info.is_main and start == 0:
        writer.add_histogram("mask_area/real", real.mask.mean(dim=(1, 2, 3)), 0)

    gen.train()
    last_logged: dict[str, float] = {}
    budget = settings.max_seconds
    t0 = clock()
    out_of_time = budget is not None and spent >= budget  # a resumed run whose budget is already spent
    if out_of_time:
        runlog.info(f"train.max_seconds={budget:g}: the budget was spent at step {start} ({spent:.1f} s); "
                    "no further step")
    done = start
    # A progress bar on a terminal only; elsewhere (a log file, a pipe, CI) a plain line every ~10% of the steps.
    report = progress and dist_info.is_main
    on_terminal = sys.stderr.isatty()
    plain_every = max(1, steps // 10)
    bar = tqdm(range(start, steps if not out_of_time else start), initial=start, total=steps, desc="train",
               unit="step", disable=not (report and on_terminal), dynamic_ncols=True)
    with StopRequests(enabled=not dist_info.enabled) as stop:
        for step in bar:
            # One optimisation step on this step's batch.
            rows = batch_indices(step, len(train), batch_size, seed, dist_info.rank, dist_info.world_size).to(gen.device)
            batch = Batch(data.image[rows], data.mask[rows], data.cond[rows])
            try:
                losses = gen.train_step(batch, step)
            except Exception as exc:  # a bug in the plugin: name it, keep its traceback (__cause__)
                good = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint was written yet"
                cause = "out of memory: lower train.batch_size or data.image_size" \
                    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) else "a bug in the plugin"
                raise PluginCallError(
                    f"generator '{gen_name}': train_step raised {type(exc).__name__} at step {step} "
                    f"({cause}). Training stopped; {good}. "
                    "Fix it, then `run --resume` continues from that checkpoint") from exc
            for name, value in losses.items():
                value = float(value)
                if not math.isfinite(value):
                    good = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint was written yet"
                    raise TrainingDiverged(
                        f"step {step}: loss '{name}' is {value}. Training stopped; {good}. "
                        "Lower the learning rate or enable EMA, then run again (or --resume)."
                    )
                window.setdefault(name, []).append(value)
            done = step + 1
            # Time budget: this step crossed it (every rank follows rank 0's clock, so all stop together).
            out_of_time = budget is not None and _over_budget(spent + clock() - t0, budget, dist_info, gen.device)
            last = done == steps or out_of_time

            # Log: mean of each loss over the window.
            if done % log_every == 0 or last:
                last_logged = {k: sum(v) / len(v) for k, v in window.items()}
                window.clear()
                if dist_info.is_main:
                    runlog.scalars(done, last_logged, prefix="loss/")
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(last_logged.items())[:4]})
            if report and not on_terminal and (done % plain_every == 0 or last):
                losses_text = ", ".join(f"{k} {v:.3g}" for k, v in list(last_logged.items())[:4])
                runlog.info(f"train: step {done}/{steps} ({100 * done // steps}%), {clock() - t0:.0f} s"
                            + (f", {losses_text}" if losses_text else ""))

            # Samples: a fixed-seed grid, comparable across steps.
            if dist_info.is_main and writer is not None and (done % sample_every == 0 or last):
                fake = sampler(GRID_SIZE, torch.Generator().manual_seed(seed + 11))
                writer.add_image("samples/real_vs_synthetic", real_vs_synthetic_grid(real, fake), done)
                writer.add_histogram("mask_area/synthetic", fake.mask.mean(dim=(1, 2, 3)), done)
                gen.eval()
                with torch.no_grad():
                    gen.log_visuals(writer, done)
                gen.train()

            # Checkpoint: atomic, with RNG states so a resumed run continues exactly; also when asked to stop.
            if dist_info.is_main and (done % checkpoint_every == 0 or last or stop.signal is not None):
                save_checkpoint({"step": done, "generator": gen.state_dict(), "rng": rng_state(), "log_window": window,
                                 "train_seconds": spent + clock() - t0}, ckpt)
            if out_of_time:
                runlog.info(f"train.max_seconds={budget:g}: stopped after step {done} of {steps} "
                            f"({spent + clock() - t0:.1f} s of training); checkpoint written to {ckpt}")
                break
            if stop.signal is not None:
                bar.close()
                name = signal.Signals(stop.signal).name
                runlog.info(f"{name}: stopped after step {done}; checkpoint written to {ckpt}")
                raise TrainingInterrupted(f"{name}: training stopped after step {done} of {steps}; the checkpoint "
                                          f"{ckpt} holds it. Continue with --resume")
    bar.close()
    if dist_info.enabled:
        for hook in hooks:
            hook.remove()

    seconds = clock() - t0
    trained = done - start
    return {
        "steps": steps,
        "steps_done": done,
        "stopped": "max_seconds" if out_of_time else "steps",
        "max_seconds": budget,
        "trained_steps": trained,
        "resumed_from": start,
        "seconds": round(seconds, 2),
        "total_seconds": round(spent + seconds, 2),
        "steps_per_second": round(trained / seconds, 3) if seconds > 0 and trained else None,
        "losses": last_logged,
    }


def _over_budget(elapsed: float, budget: float, dist_info: DistInfo, device: torch.device) -> bool:
    """Whether ``elapsed`` training seconds reached ``budget``; under DDP rank 0 decides for every rank."""
    over = elapsed >= budget
    if dist_info.enabled:
        flag = torch.tensor([float(over)], device=device)
        torch.distributed.broadcast(flag, src=0)
        over = bool(flag.item())
    return over


def real_vs_synthetic_grid(real: Batch, fake: Batch) -> torch.Tensor:
    """Real pairs (left) next to synthetic ones (right), masks outlined."""
    return side_by_side(pair_grid(real.image, real.mask), pair_grid(fake.image, fake.mask))
