"""The segmenter worker processes: a worker that dies before it can answer is an error, never a hang."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from toolkit.seg import workers


def _square(chunk: list) -> list:
    return [x * x for x in chunk]


def _run_with_deadline(fn, seconds: float):
    """fn() in a thread; its result or exception, or a failure if it has not returned after ``seconds``."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"run_in_processes still waiting after {seconds} s: a dead worker hung it"
    return box


def test_a_worker_that_cannot_start_its_code_is_an_error_not_a_hang(monkeypatch):
    """What hung a running benchmark: a refactor moved the workers' entry point on disk, so each spawned child
    could not unpickle it and died, while the parent was still writing it megabytes of training slices."""

    def entry(*args):  # pragma: no cover - never runs: the child finds no such attribute
        raise AssertionError("unreachable")

    entry.__module__, entry.__qualname__ = workers.__name__, "_entry_that_moved"
    monkeypatch.setattr(workers, "_entry_that_moved", entry, raising=False)  # here only, not in the child
    monkeypatch.setattr(workers, "_process_main", entry)
    chunk = [np.zeros(2**20)]  # 8 MB: far more than a pipe holds
    box = _run_with_deadline(lambda: workers.run_in_processes(_square, [chunk], (), ["seeds 0"]), 120)
    error = box.get("error")
    assert isinstance(error, RuntimeError), box
    assert "segmenter worker 1 of 1 (seeds 0) exited with code 1 before it took its jobs" in str(error)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
