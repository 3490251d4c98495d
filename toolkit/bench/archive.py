"""A benchmark's evidence, small enough to commit: every cell's scores without its checkpoints or images.

A recorded leaderboard alone cannot grow: its CIs come from per-patient paired differences, which
live in the cells, and the cells (checkpoints, synthetic sets) are too large to keep in git, so a
machine that loses its files loses the draws. An archive keeps what the leaderboard is built from
(each finished cell's results, per-patient Dice, config and split) with the plan, a few kB per cell.
Copied back under ``--out`` and run with the same options and more ``--draws`` (or ``--seeds``),
``benchmark`` keeps the archived cells as finished, trains only the new ones, and pools them all in
one leaderboard. ``leaderboard --validity`` reads an archive like the benchmark it came from.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from toolkit.bench.cells import is_finished
from toolkit.bench.plan import PLAN_FIX, Plan, extended_plan, plan_fields
from toolkit.io import atomic_write, read_json
from toolkit.rundir import MARKER, RunError

#: Per cell: what the leaderboard, its bootstrap and the validity tables read (nothing trained or sampled).
CELL_FILES = ("config.yaml", "split.json", "results.json", "dice_gain/summary.json", "dice_gain/per_patient.csv",
              MARKER)
#: The benchmark's own files: the plan (to continue it) and the leaderboard written from these cells.
TOP_FILES = ("benchmark.json", "leaderboard.md", "leaderboard.csv", "leaderboard.json")
TOP_FOLDERS = ("plots", "validity")
ARCHIVE_FILE = "archive.json"


def archive_benchmark(bench: str | Path, dest: str | Path) -> dict[str, Any]:
    """Copy ``bench``'s evidence into ``dest``; returns what was kept (cells, bytes, unfinished cells left out).

    ``dest`` may be new, empty, or an earlier archive of the same benchmark (refreshed: a benchmark that
    grew by draws is archived again over its older archive). Anything else is refused before a file is
    written, so an archive never replaces a folder that is not one.
    """
    bench, dest = Path(bench), Path(dest)
    plan = _read_plan(bench / "benchmark.json")
    if dest.resolve() == bench.resolve():
        raise RunError(f"archive: {dest} is the benchmark itself; name another folder, e.g. "
                       f"benchmarks/results/{bench.name}")
    _check_dest(dest, plan)
    cells = sorted(p for p in (bench / "cells").iterdir() if p.is_dir()) if (bench / "cells").is_dir() else []
    finished = [c for c in cells if is_finished(c)]
    if not finished:
        raise RunError(f"archive: {bench / 'cells'} holds no finished cell; run the benchmark first")
    staging = dest.parent / f".{dest.name}.archiving"
    if staging.exists():
        shutil.rmtree(staging)  # our own half-written copy from an interrupted archive
    size = 0
    for cell in finished:
        for rel in CELL_FILES:
            if (cell / rel).is_file():
                target = staging / "cells" / cell.name / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cell / rel, target)
                size += target.stat().st_size
    for rel in TOP_FILES:
        if (bench / rel).is_file():
            shutil.copyfile(bench / rel, staging / rel)
            size += (staging / rel).stat().st_size
    for rel in TOP_FOLDERS:
        if (bench / rel).is_dir():
            shutil.copytree(bench / rel, staging / rel)
            size += sum(p.stat().st_size for p in (staging / rel).rglob("*") if p.is_file())
    summary = {"source": str(bench.resolve()), "archived": time.strftime("%Y-%m-%d %H:%M:%S"),
               "cells": len(finished), "bytes": size,
               "left_out": [c.name for c in cells if c not in finished],  # unfinished: nothing to pool yet
               "continue": "copy this folder under --out and run the same benchmark command with more --draws"}
    atomic_write(staging / ARCHIVE_FILE, json.dumps(summary, indent=2))
    if dest.exists():
        shutil.rmtree(dest)  # an earlier archive of this benchmark (checked above), replaced whole
    staging.rename(dest)
    return summary


def is_archive(folder: Path) -> bool:
    return (folder / ARCHIVE_FILE).is_file()


def _read_plan(plan_file: Path) -> dict[str, Any]:
    if not plan_file.is_file():
        raise RunError(f"archive: {plan_file.parent} is not a benchmark folder (no benchmark.json); name the "
                       "folder `benchmark --name` wrote under --out")
    return read_json(plan_file, PLAN_FIX, RunError, check=lambda v: v["plan"])


def _check_dest(dest: Path, plan: dict[str, Any]) -> None:
    if not dest.exists():
        return
    if not dest.is_dir():
        raise RunError(f"archive: {dest} exists and is not a folder; name a new folder")
    if not any(dest.iterdir()):
        return
    if not is_archive(dest):
        raise RunError(f"archive: {dest} exists and is not an archive (no {ARCHIVE_FILE}), so it is not "
                       "replaced; name a new folder")
    older = _read_plan(dest / "benchmark.json")
    if extended_plan(older, Plan(**plan_fields(plan))) is None:
        raise RunError(f"archive: {dest} archives another benchmark plan ({dest / 'benchmark.json'}); name a new "
                       "folder (an archive is refreshed only by the benchmark it came from, grown or not)")
