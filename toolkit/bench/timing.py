"""How long a benchmark's work takes on this machine, for ``benchmark --plan``: short timings and the schedule.

A cell never runs alone: with ``--jobs 2`` on 2 cores its neighbour keeps the
other core busy, and two busy cores share one memory bus and last-level cache.
So each timing runs beside :class:`Contenders`, spawned copies of the same
work that keep every other core as busy as the benchmark will. Timed alone,
--plan promised 1 h 54 min for a budget curve that took 2 h 57 min
(benchmarks/results/benchmark_v27_budget.md); how much of that gap the
contenders close has not been measured yet. The cells of one stage (the
baselines, each budget, the re-scorings) go to a process pool in order, and a
stage ends with its last cell, so the wall time is the sum of the stages'
:func:`makespan`, not the work divided by the jobs.
"""

from __future__ import annotations

import dataclasses
import heapq
import multiprocessing
import queue
import time
from collections.abc import Callable, Sequence

import torch

from toolkit.bench.cells import WorkerSetup
from toolkit.config import Config
from toolkit.experiment import baseline_store, build_generator, prepare_data, train_context
from toolkit.rundir import RunError
from toolkit.runtime import resolve_device, set_threads
from toolkit.seg.train import Pool, train_unet
from toolkit.train.loop import batch_indices
from toolkit.types import Batch

#: The work a contender runs: a config's segmenter steps, or its generator's train_step.
UNET, GENERATOR = "unet", "generator"


def makespan(durations: Sequence[float], jobs: int) -> float:
    """Wall seconds of tasks handed, in order, each to the first free of ``jobs`` workers (a pool's ``map``)."""
    free = [0.0] * max(1, min(jobs, len(durations)))
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free, default=0.0)


def generator_step(config: Config, prepared, device) -> tuple[Callable[[int], None], Callable[[int], float]]:
    """(one train_step of ``config``'s generator at step i, seconds per sampled slice over k slices)."""
    gen = build_generator(config, device)
    gen.setup(train_context(config, prepared, gen, baseline_store(config, prepared, device)))
    data = prepared.train.to_batch().to(device)
    gen.train()

    def step(i: int) -> None:
        rows = batch_indices(i, len(prepared.train), config.train.batch_size, config.seed).to(device)
        gen.train_step(Batch(data.image[rows], data.mask[rows], data.cond[rows]), i)

    def sample(k: int) -> float:
        gen.eval()
        k = min(k, len(prepared.train))
        t0 = time.perf_counter()
        with torch.no_grad():
            gen.sample(k, cond=data.cond[:k].cpu(), masks=data.mask[:k].cpu() if gen.needs_masks else None,
                       generator=torch.Generator().manual_seed(0))
        gen.train()
        return (time.perf_counter() - t0) / k

    return step, sample


def unet_steps(config: Config, prepared, device) -> Callable[[int], float]:
    """Seconds of a segmenter trained ``steps`` steps (one validation at the end) on ``prepared``'s pairs."""

    def timed(steps: int) -> float:
        t0 = time.perf_counter()
        train_unet([Pool.of(prepared.train)], prepared.val,
                   dataclasses.replace(config.seg, steps=steps, val_every=steps), seed=0, device=device)
        return time.perf_counter() - t0

    return timed


def measure_step_seconds(config: Config, prepared, device, budget_s: float = 1.5) -> tuple[float, float]:
    """(seconds per train_step, seconds per sampled slice) of ``config``'s generator: a short timing."""
    step, sample = generator_step(config, prepared, device)
    step(0)  # warm-up: allocation, oneDNN kernel choice
    n, t0 = 0, time.perf_counter()
    while n < 2 or (n < 20 and time.perf_counter() - t0 < budget_s):
        step(n + 1)
        n += 1
    return (time.perf_counter() - t0) / n, sample(32)


def measure_unet_seconds(config: Config, prepared, device) -> float:
    """Seconds of one segmenter training of ``config.seg`` (steps and validations), from two short timings."""
    timed = unet_steps(config, prepared, device)
    seg = config.seg
    timed(2)  # warm-up
    short, long = timed(2), timed(8)
    per_step = max((long - short) / 6, 1e-6)
    per_validation = max(short - 2 * per_step, 0.0)
    return seg.steps * per_step + -(-seg.steps // seg.val_every) * per_validation


def _unet_work(config: Config, prepared, device) -> Callable[[int], object]:
    """A contender's unit of segmenter work: a 4-step training, over and over."""
    timed = unet_steps(config, prepared, device)
    return lambda i: timed(4)


def _contend(threads: int, setup: WorkerSetup, commands, ready) -> None:
    """A contender process: run the commanded work over and over until the next command (None: exit)."""
    setup.apply()
    set_threads(threads)
    device = resolve_device("cpu")
    command = commands.get()
    while command is not None:
        what, config = command
        try:
            prepared = prepare_data(config)
            work = _unet_work(config, prepared, device) if what == UNET else \
                generator_step(config, prepared, device)[0]
            work(0)
        except Exception as exc:  # reported by the timing process, which names the work
            ready.put(f"failed: {type(exc).__name__}: {exc}")
            return
        ready.put("ready")
        i = 1
        while True:
            try:
                command = commands.get_nowait()
                break
            except queue.Empty:
                work(i)
                i += 1


class Contenders:
    """``n`` spawned processes of ``threads`` threads that keep the other cores busy while one timing runs.

    ``with Contenders(n, threads, setup) as c: c.busy(GENERATOR, config); time it...``: each
    contender runs the work (``config``'s generator steps, or ``UNET``: its segmenter's) until the
    next ``busy`` call. ``setup`` loads the --plugins a spawned process needs.
    """

    def __init__(self, n: int, threads: int, setup: WorkerSetup = WorkerSetup(), timeout_s: float = 600.0) -> None:
        self.n, self.threads, self.setup, self.timeout_s = n, threads, setup, timeout_s
        self.procs: list = []
        self.commands: list = []

    def __enter__(self) -> Contenders:
        context = multiprocessing.get_context("spawn")
        self.ready = context.Queue()
        for _ in range(self.n):
            commands = context.Queue()
            proc = context.Process(target=_contend, args=(self.threads, self.setup, commands, self.ready),
                                   daemon=True)
            proc.start()
            self.procs.append(proc)
            self.commands.append(commands)
        return self

    def busy(self, what: str, config: Config) -> None:
        """Switch every contender to ``what`` (UNET or GENERATOR) of ``config`` and wait until each runs it."""
        for commands in self.commands:
            commands.put((what, config))
        for _ in self.procs:
            try:
                answer = self.ready.get(timeout=self.timeout_s)
            except queue.Empty:
                raise RunError(f"benchmark --plan: a timing contender did not start {what} in "
                               f"{self.timeout_s:.0f} s") from None
            if answer != "ready":
                raise RunError(f"benchmark --plan: a timing contender running {what} of {config.run.generator} "
                               f"{answer}")

    def __exit__(self, *exc) -> None:
        for commands in self.commands:
            commands.put(None)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join()
