"""The run directory: where every stage reads and writes, and the rules that keep it safe.

``runs/<name>/`` holds ``config.yaml``, ``split.json``, ``checkpoints/last.pt``,
``synthetic/synthetic.npz`` (+ ``grid.png``), ``results.json``, ``log.txt``,
``metrics.jsonl`` and TensorBoard events. A marker file that only ganseg
writes (``.ganseg-run``) tells a run from any other folder: ``--force``
replaces only a folder that has it, never a user's folder that happens to
hold a ``config.yaml``. Every file is written atomically.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from torchvision.utils import save_image

from toolkit.data.slices import SliceSet
from toolkit.io import atomic_write, read_checked, read_json

MARKER = ".ganseg-run"


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (exists, missing, incomplete, not a run)."""


def default_run_name(generator: str) -> str:
    return f"{generator}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """Paths and file I/O of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # Paths ----------------------------------------------------------------------------------
    config = property(lambda self: self.path / "config.yaml")
    split = property(lambda self: self.path / "split.json")
    checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    synthetic = property(lambda self: self.path / "synthetic" / "synthetic.npz")
    results = property(lambda self: self.path / "results.json")
    marker = property(lambda self: self.path / MARKER)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def is_run(self) -> bool:
        """A ganseg run: it has the marker (or, for runs made before the marker existed, a config and split)."""
        return self.marker.is_file() or (self.config.is_file() and self.split.is_file())

    # Opening --------------------------------------------------------------------------------
    @classmethod
    def create(cls, out: str | Path, name: str, force: bool = False) -> RunDir:
        """A new run directory ``out/name``; an existing run is replaced only with ``force``."""
        run = cls(Path(out) / name)
        if run.path.exists() and not run.path.is_dir():
            raise RunError(f"{run.path} exists and is not a folder; choose another --name or --out")
        if run.path.is_dir() and any(run.path.iterdir()):
            if not force:
                raise RunError(f"run directory {run.path} already exists. Use --resume to continue it, "
                               "--force to delete and replace it, or another --name")
            if not run.marker.is_file():
                raise RunError(f"--force: {run.path} is not a ganseg run (it has no {MARKER} marker), so it "
                               "is not deleted; choose another --name or --out")
            shutil.rmtree(run.path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            atomic_write(run.marker, "ganseg run directory; --force may replace this folder\n")
        except OSError as exc:
            raise RunError(f"cannot create the run directory {run.path}: {getattr(exc, 'strerror', None) or exc}; "
                           "choose a writable --out") from None
        return run

    @classmethod
    def existing(cls, path: str | Path, purpose: str = "--resume") -> RunDir:
        """An existing run (for ``--resume`` and ``evaluate``)."""
        run = cls(path)
        if not run.config.is_file():
            raise RunError(f"{purpose}: {run.path} is not a run directory (no config.yaml); "
                           "name an existing run (see the runs/ folder)")
        return run

    def saved_config(self) -> dict[str, Any]:
        """This run's resolved config.yaml as a mapping; {} without a readable one."""
        try:
            config = yaml.safe_load(self.config.read_text()) if self.config.is_file() else None
        except (OSError, yaml.YAMLError):
            return {}
        return config if isinstance(config, dict) else {}

    def generator(self) -> str | None:
        """The generator this run trained (``run.generator`` of its config.yaml); None without a readable one.

        Read from the config, never parsed from the folder name: a run's name is the user's choice.
        """
        name = (self.saved_config().get("run") or {}).get("generator")
        return str(name) if name else None

    def scored_modes(self) -> list[str]:
        """The usage modes dice_gain scored this run under (``evaluators.dice_gain.modes``); [] if none."""
        modes = ((self.saved_config().get("evaluators") or {}).get("dice_gain") or {}).get("modes") or []
        return [str(m) for m in modes] if isinstance(modes, list) else [str(modes)]

    def remove(self) -> None:
        """Delete a run that never started (its data failed to load): nothing is left to collide with."""
        if self.marker.is_file():
            shutil.rmtree(self.path, ignore_errors=True)

    # Files ----------------------------------------------------------------------------------
    def write_config(self, yaml_text: str) -> None:
        atomic_write(self.config, yaml_text)

    def _fix(self, first: str = "") -> str:
        """What to do about a damaged file of this run."""
        rerun = (f"rerun the run with --force (python cli.py run --force --name {self.name} --out {self.path.parent} "
                 "with the generator and settings it was made with), or restore the file from a copy")
        return f"{first}, {rerun}" if first else rerun[0].upper() + rerun[1:]

    def read_split(self) -> dict[str, list[str]] | None:
        """The saved patient split, or None before one is written; a damaged split.json is a RunError."""
        if not self.split.is_file():
            return None
        return read_json(self.split, self._fix(), RunError, check=lambda v: _mapping(v["patients"]))

    def write_split(self, settings: dict[str, Any], patients: dict[str, list[str]]) -> None:
        atomic_write(self.split, json.dumps({"settings": settings, "patients": patients}, indent=2))

    def save_synthetic(self, synthetic: SliceSet, grid_size: int = 64) -> None:
        """The synthetic set (atomic .npz) and a picture of its first pairs."""
        from toolkit.train.visuals import pair_grid

        atomic_write(self.synthetic, synthetic.save)
        batch = synthetic.to_batch(np.arange(min(grid_size, len(synthetic))))
        save_image(pair_grid(batch.image, batch.mask), self.synthetic.parent / "grid.png")

    def load_synthetic(self) -> SliceSet:
        if not self.synthetic.is_file():
            raise RunError(f"{self.path} has no synthetic set ({self.synthetic}); finish the run first "
                           f"(python cli.py run --resume --name {self.name})")
        resample = (f"Sample it again from the last checkpoint (python cli.py run --resume --name {self.name} "
                    f"--out {self.path.parent})")
        return read_checked(self.synthetic, SliceSet.load, self._fix(resample), RunError)

    def read_results(self) -> dict[str, Any]:
        """results.json, or {} before one is written; a damaged one is a RunError (never silently replaced)."""
        if not self.results.is_file():
            return {}
        return read_json(self.results, self._fix(), RunError, check=_mapping)

    def merge_results(self, update: dict[str, Any]) -> dict[str, Any]:
        """Merge ``update`` into results.json (one level deep) and write it atomically as strict JSON."""
        results = self.read_results()
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(results.get(key), dict):
                results[key].update(value)
            else:
                results[key] = value
        results["run"] = self.name
        # Strict JSON: NaN/inf (an arm switched off, an undefined interval) become null.
        atomic_write(self.results, json.dumps(_finite(results), indent=2, default=_json_default, allow_nan=False))
        return results


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, found {type(value).__name__}")
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
