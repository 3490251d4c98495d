"""Where benchmark tasks run: a callable ``(fn, tasks) -> [fn(*task) for task in tasks]``, in order.

:func:`local_executor` runs them in a local process pool (``jobs`` workers,
the machine's cores split between them); :func:`ray_executor` submits each as
a Ray task (``ray`` is an optional extra, imported only there).
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from toolkit.runtime import machine_threads

log = logging.getLogger("toolkit.benchmark")


Executor = Callable[[Callable[..., Any], list[tuple]], list]


def _pool_map(jobs: int, fn, tasks: list[tuple]) -> list:
    if jobs <= 1 or len(tasks) <= 1:
        return [fn(*t) for t in tasks]

    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*tasks)))


def local_executor(jobs: int) -> tuple[Executor, int]:
    """A process pool of ``jobs`` workers on this machine, and the threads each task gets (cores // jobs)."""

    return (lambda fn, tasks: _pool_map(jobs, fn, tasks)), max(1, machine_threads() // max(jobs, 1))


class RayMissing(RuntimeError):
    """``--executor ray`` without the ``ray`` package."""


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def ray_runtime_env() -> dict[str, Any]:
    """The job environment of a Ray instance started here: workers import this checkout's toolkit.

    A local Ray instance starts its workers from the same Python; with
    PYTHONPATH they import the ``toolkit`` the driver runs (a source checkout
    beside an installed copy would otherwise be shadowed). On a remote
    cluster ganseg must be installed on every node, and the benchmark folder
    and the cache (``GANSEG_CACHE``) must be on storage every node sees.
    """
    source = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def ray_executor(jobs: int = 0, address: str | None = None) -> tuple[Executor, int]:
    """Every task a Ray task: ``num_cpus`` = its threads, one GPU per task where the cluster has GPUs.

    Connects to ``address`` (``auto``, ``ray://host:10001``, ``host:6379``),
    to a Ray instance this process already started, or (None, no
    ``RAY_ADDRESS``) starts a local one. ``jobs`` cells run at once
    (0: one per cluster CPU); each task gets cluster CPUs // jobs threads.
    """
    if not ray_installed():
        raise RayMissing('--executor ray needs the ray package: pip install -e ".[ray]"')
    import ray

    if not ray.is_initialized():
        # A local instance started here gets this checkout on its workers' path; a cluster has its own install.
        local = address is None and not os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env=ray_runtime_env() if local else None)
    resources = ray.cluster_resources()
    cpus = max(1, int(resources.get("CPU", 1)))
    threads = max(1, cpus // jobs) if jobs else 1
    gpus = 1 if resources.get("GPU", 0) >= 1 else 0

    def run(fn, tasks: list[tuple]) -> list:
        remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=1)(fn)
        return ray.get([remote.remote(*t) for t in tasks])

    log.info("benchmark: Ray cluster with %d CPUs and %d GPUs, %d thread(s) and %d GPU per task", cpus,
             int(resources.get("GPU", 0)), threads, gpus)
    return run, threads


def make_executor(kind: str = "local", jobs: int = 0, ray_address: str | None = None) -> tuple[Executor, int]:
    """The executor ``kind`` (local | ray) and the threads each task gets; a missing ray fails here."""

    if kind == "local":
        return local_executor(jobs or machine_threads())
    if kind == "ray":
        return ray_executor(jobs, ray_address)
    raise ValueError(f"executor must be local or ray, got {kind!r}")

