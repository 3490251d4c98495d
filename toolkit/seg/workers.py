"""Where an evaluation's U-Nets train: how many processes and threads (:func:`plan`), and the spawned
worker processes themselves (:func:`run_in_processes`).

A second intra-op thread buys nothing for the protocol's small U-Nets (the
quick profile: 3 x 3 of 0.5M parameters at batch 16), so on a CPU the jobs
are cut into N contiguous chunks, each trained in its own spawned process with
one thread (on a 2-core CPU: both cores busy on different U-Nets). With one
thread per U-Net the results do not depend on the number of processes.

Workers are spawned (no forked torch state), ignore Ctrl-C (the parent ends
them) and ask Linux to end them with the parent; each sends its results back
as ``torch.save`` bytes, exact tensors with no shared-memory handles to
outlive it, or its exception with the remote traceback.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import sys
import traceback
from dataclasses import dataclass

import torch

from toolkit.settings import SegSettings


@dataclass(frozen=True)
class Plan:
    """How this machine trains one evaluation's U-Nets: how many at once, and threads per U-Net.

    ``threads`` is also the count for inference in the calling process, and the one a baseline's
    cache key records (None: the current count).
    """

    processes: int
    threads: int | None


def unet_threads(config: SegSettings, device: torch.device | str = "cpu") -> int | None:
    """Threads per U-Net under ``seg.threads`` and ``seg.processes`` (see :func:`plan`); None: the current count."""
    if torch.device(device).type != "cpu":
        return config.threads
    if config.processes == "auto":
        return 1 if config.threads is None else config.threads
    if config.processes == 1:
        return config.threads
    return config.threads or 1


def plan(config: SegSettings, device: torch.device | str = "cpu") -> Plan:
    """Resolve ``seg.processes`` and ``seg.threads`` for ``device``.

    ==========  =========  ==================================================================
    processes   threads    trains
    ==========  =========  ==================================================================
    auto        null       in as many processes as cores are idle now, 1 thread each
    auto or 1   T          in this process at T threads
    1           null       in this process at the current thread count (the one-by-one path)
    N > 1       null or T  in N processes of 1 (or T) threads each
    ==========  =========  ==================================================================

    With one thread per U-Net the results are ``train_unet``'s at one thread whatever the number of
    processes (1 included), so ``auto`` gives the same numbers on a busy and on an idle machine.
    Off the CPU there is one process, at ``threads``.
    """
    from toolkit.runtime import default_threads

    threads = unet_threads(config, device)
    if torch.device(device).type != "cpu":
        return Plan(1, threads)
    if config.processes == "auto":
        return Plan(default_threads() if config.threads is None else 1, threads)
    return Plan(int(config.processes), threads)


def _die_with_parent(parent: int) -> None:
    """Linux: ask for SIGTERM when the parent dies (even by SIGKILL), so no worker is left orphaned."""
    if os.getppid() != parent:  # the parent is already gone
        os._exit(1)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _process_main(conn, parent: int) -> None:
    """Entry point of a spawned worker: receive (target, args), run ``target(*args)`` (its chunk), send ("ok",
    bytes) or ("error", (exc, traceback))."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends the workers
    _die_with_parent(parent)
    try:
        target, args = conn.recv()
        buffer = io.BytesIO()
        torch.save(target(*args), buffer)  # exact tensors, no shared-memory handles to outlive this process
        message = ("ok", buffer.getvalue())
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        text = traceback.format_exc()
        try:
            pickle.dumps(exc)
        except Exception:  # noqa: BLE001
            exc = None
        message = ("error", (exc, text))
    conn.send(message)
    conn.close()


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a segmenter worker process (the cause of the re-raise)."""


def run_in_processes(target, chunks: list[list], args: tuple, labels: list[str]) -> list[list[tuple]]:
    """``target(chunk, *args)`` for each chunk in its own spawned process; the outputs in chunk order.

    ``target`` must be a module-level function (it is pickled by name); it returns plain data (tensors,
    numbers, lists), sent back through ``torch.save``. ``labels[i]`` names chunk ``i`` in error messages.

    A worker's exception is raised here (with its remote traceback as the cause and a note naming the
    worker and its seeds); a worker that dies without an answer (killed, out of memory) is a
    RuntimeError; on any of these, and on KeyboardInterrupt, every worker is terminated and joined.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    context = mp.get_context("spawn")
    processes, connections = [], []
    outputs: list[list[tuple] | None] = [None] * len(chunks)
    try:
        # The jobs (training slices: megabytes) go through the pipe after the start, never in the spawn
        # payload: the parent writes that payload while it still holds the child's end of the spawn pipe, so a
        # child that died while reading it (its code changed on disk under a running benchmark: it could not
        # unpickle its entry point) left the parent blocked in the write for ever. Through the pipe, a dead
        # worker is a BrokenPipeError here.
        for i in range(len(chunks)):
            ours, theirs = context.Pipe()
            process = context.Process(target=_process_main, args=(theirs, os.getpid()), name=f"ganseg-unets-{i}",
                                      daemon=True)
            process.start()
            theirs.close()  # only the worker holds its end: its death reads as EOF (or a broken pipe) here
            processes.append(process)
            connections.append(ours)
        for i, (connection, chunk) in enumerate(zip(connections, chunks)):
            try:
                connection.send((target, (chunk, *args)))
            except OSError:
                processes[i].join(timeout=5)
                raise RuntimeError(f"segmenter worker {i + 1} of {len(chunks)} ({labels[i]}) exited with code "
                                   f"{processes[i].exitcode} before it took its jobs (see its error above; a "
                                   "benchmark whose code changed on disk while it ran?)") from None
        pending = dict(enumerate(connections))
        while pending:
            for connection in wait(list(pending.values())):
                i = next(k for k, c in pending.items() if c is connection)
                del pending[i]
                where = f"segmenter worker {i + 1} of {len(chunks)} ({labels[i]})"
                try:
                    kind, payload = connection.recv()
                except EOFError:
                    processes[i].join(timeout=5)
                    raise RuntimeError(f"{where} exited with code {processes[i].exitcode} without a result "
                                       "(killed? out of memory?)") from None
                if kind == "error":
                    exc, text = payload
                    if exc is None:
                        raise RuntimeError(f"{where} failed:\n{text}")
                    exc.add_note(f"raised in {where}")
                    raise exc from WorkerTraceback(f"\n\n{text}")
                outputs[i] = torch.load(io.BytesIO(payload), weights_only=True)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()
        for connection in connections:
            connection.close()
    return outputs



def contiguous_chunks(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into ``parts`` contiguous pieces of near-equal size (the first ones one longer)."""
    size, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        out.append(range(start, stop))
        start = stop
    return [r for r in out if len(r)]


__all__ = ["Plan", "WorkerTraceback", "contiguous_chunks", "plan", "run_in_processes", "unet_threads"]
