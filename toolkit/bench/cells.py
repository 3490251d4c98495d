"""One benchmark task in a worker process: a cell's run, a re-scoring, or a (regime, draw)'s baselines.

Each task writes its run into the benchmark folder itself, so the driver may
die: the same command continues, finished cells are never recomputed, and an
interrupted cell resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.bench.plan import Cell, Plan, cell_config
from toolkit.config import Config
from toolkit.data import split_patients
from toolkit.experiment import baseline_store, build_evaluators, evaluate_run, prepare_data, run_experiment
from toolkit.rundir import RunDir, RunError
from toolkit.runtime import resolve_device, set_threads

log = logging.getLogger("toolkit.benchmark")


def is_finished(run_dir: Path) -> bool:
    results = RunDir(run_dir).read_results()
    return "values" in results.get("evaluation", {}).get("dice_gain", {})


@dataclass(frozen=True)
class WorkerSetup:
    """What a task needs in a fresh process (a pool worker, a Ray worker on another node) before it starts."""

    plugins: tuple[str, ...] = ()  # --plugins folders to load
    env: dict[str, str] = field(default_factory=dict)  # e.g. GANSEG_CACHE, so every task shares the baseline cache

    @classmethod
    def here(cls, plugins: Sequence[str] = ()) -> WorkerSetup:
        env = {k: os.environ[k] for k in ("GANSEG_CACHE",) if k in os.environ}
        return cls(tuple(str(Path(p).resolve()) for p in plugins), env)

    def apply(self) -> None:
        from toolkit.registry import load_plugin_dir

        os.environ.update(self.env)
        for folder in self.plugins:
            files = sorted(p for p in Path(folder).glob("*.py") if not p.name.startswith("_"))
            if not all(f"ganseg_user_plugins.{p.stem}" in sys.modules for p in files):
                load_plugin_dir(folder)  # once per process: a second load would register the names twice


def _run_cell(plan: Plan, cell: Cell, cells_dir: Path, threads: int, setup: WorkerSetup = WorkerSetup()) -> str:
    """One cell in a worker process: a run, resumed if it was interrupted, skipped if it is finished."""

    setup.apply()
    run_dir = cells_dir / cell.name
    if cell.rescored:
        return _rescore_cell(plan, cell, cells_dir, threads)
    config = cell_config(plan, cell, threads)
    stale = stale_split(run_dir, config)
    if stale:  # e.g. trained on a draw that repeated another's patients, before draws were made distinct
        log.warning("benchmark: cell %s trained on %s, but its draw is now %s; running it again", cell.name,
                    stale[0], stale[1])
    elif is_finished(run_dir):
        return "kept"
    resume = not stale and (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "config.yaml").is_file()
    shorter = plan.shorter(cell)
    continued = shorter is not None and not resume
    if continued:  # a budget dimension: start from the shorter budget's checkpoint, not from step 0
        continue_shorter(cells_dir / shorter.name, cells_dir, cell.name)
    run_experiment(config, out=cells_dir, name=cell.name, force=not (resume or continued) and run_dir.exists(),
                   resume=resume or continued, progress=False, quiet=True)
    return "rerun" if stale else "continued" if continued else "resumed" if resume else "ran"


#: What a longer budget's cell takes from the shorter one: its training so far (the loop resumes it bit
#: for bit), its split, and its logs (so TensorBoard and metrics.jsonl show the whole curve).
CONTINUED_FILES = ("config.yaml", "split.json", "checkpoints/last.pt", "metrics.jsonl", "log.txt")


def continue_shorter(source: Path, cells_dir: Path, name: str) -> None:
    """A new cell ``name`` holding ``source``'s training: a resumed run from there trains only the extra steps.

    Nothing of ``source``'s evaluation is copied (results, synthetic set, dice_gain/): the longer cell
    samples and scores its own.
    """
    if not is_finished(source):
        raise RunError(f"benchmark: cell {name} continues the training of {source}, which has not finished; "
                       "run the same command again (the shorter budgets go first)")
    if not (source / "checkpoints" / "last.pt").is_file():
        raise RunError(f"benchmark: cell {name} continues the training of {source}, which keeps its scores but "
                       "not its checkpoint (an archive); remove that draw's cells of every budget from "
                       f"{cells_dir} to train them again in one go")
    target = RunDir.create(cells_dir, name, force=(cells_dir / name).exists()).path
    for rel in CONTINUED_FILES:
        if (source / rel).is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, target / rel)
    for events in source.glob("events.out.tfevents.*"):
        shutil.copyfile(events, target / events.name)


def run_cell_task(plan: Plan, cell: Cell, cells_dir: Path, threads: int,
                      setup: WorkerSetup = WorkerSetup()) -> str:
    """:func:`_run_cell`, with a failure returned as ``failed: <error>`` so the other cells go on.

    The cell's folder keeps what it wrote (its log.txt, its last checkpoint): the same benchmark
    command resumes it, and never touches the finished cells.
    """
    try:
        return _run_cell(plan, cell, cells_dir, threads, setup)
    except Exception as exc:  # one cell's failure, reported at the end; Ctrl-C still stops everything
        ours = type(exc).__module__.startswith("toolkit")  # ganseg's errors say what they are; others get a name
        text = (str(exc) if ours else f"{type(exc).__name__}: {exc}").strip().splitlines()[0]
        logfile = cells_dir / cell.name / "log.txt"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "a") as f:  # the traceback, for whoever fixes it (a plugin author needs it)
            f.write(f"benchmark: cell failed: {text}\n" + "".join(traceback.format_exception(exc)))
        log.error("benchmark: cell %s failed: %s (traceback in %s)", cell.name, text, logfile)
        return f"failed: {text}"


def _rescore_cell(plan: Plan, cell: Cell, cells_dir: Path, threads: int) -> str:
    """Score a trained cell's synthetic set under another augmentation level, in a run folder of its own.

    The folder holds copies of the trained cell's config (with this cell's settings), split, synthetic set
    and training summary, and no checkpoint: no generator trains again.
    """

    run_dir, source = cells_dir / cell.name, cells_dir / cell.trained.name
    if is_finished(run_dir) and not _rescore_stale(run_dir, source):
        return "kept"
    if not is_finished(source):
        raise RunError(f"benchmark: cell {cell.name} re-scores {source}, which has not finished")
    rundir = RunDir.create(cells_dir, cell.name, force=run_dir.exists())
    rundir.write_config(cell_config(plan, cell, threads).to_yaml())
    for name in ("split.json", "synthetic/synthetic.npz"):
        target = run_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
    trained = RunDir(source).read_results()
    rundir.merge_results({k: trained[k] for k in ("train", "synthetic", "data") if k in trained}
                         | {"rescored_from": cell.trained.name})
    evaluate_run(run_dir, quiet=True)
    return "rescored"


def _rescore_stale(run_dir: Path, source: Path) -> bool:
    """The trained cell's synthetic set changed since this copy was scored (it was trained again).

    Without the original (an archive keeps scores, not synthetic sets) there is nothing newer to score.
    """
    copy, original = run_dir / "synthetic" / "synthetic.npz", source / "synthetic" / "synthetic.npz"
    return original.is_file() and (not copy.is_file() or original.stat().st_mtime > copy.stat().st_mtime)


def stale_split(run_dir: Path, config: Config) -> tuple[list[str], list[str]] | None:
    """(saved, current) training patients when a cell's saved split is not the one its config draws now."""

    saved = RunDir(run_dir).read_split()
    if saved is None:
        return None
    current = split_patients(sorted(set(sum(saved.values(), []))), config.split)
    if all(current[k] == saved.get(k, []) for k in current):
        return None
    return saved.get("train", []), current["train"]


def train_baselines(plan: Plan, n_train: int, draw: int, threads: int, setup: WorkerSetup = WorkerSetup(),
                     augment: str = "") -> int:
    """The real-only baselines of one (regime, draw), into the shared cache; returns how many were trained."""

    setup.apply()
    cell = Cell(plan.generators[0], n_train, plan.ratios[0], draw, 0, augment)
    config = cell_config(plan, cell, threads)
    set_threads(threads)
    device = resolve_device(config.train.device)
    store = baseline_store(config, prepare_data(config), device)
    store.get_many(list(range(build_evaluators(config, ["dice_gain"])["dice_gain"].seeds)))  # together: all cores
    return store.trained

