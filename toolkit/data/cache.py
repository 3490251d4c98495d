"""On-disk cache of preprocessed slices.

An entry is keyed by the input files' paths, sizes and modification times
plus the preprocessing settings, so an edited file or a changed setting
misses. Each entry also stores the data fingerprint (a hash of the files'
contents and the settings), which stays the same when the data are copied
elsewhere; downstream caches (the segmentation baseline) key on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from toolkit.data.layouts import Case
from toolkit.data.slices import SliceSet
from toolkit.io import atomic_write

#: Bump when preprocessing changes what the same settings produce.
PREPROCESS_VERSION = 2  # 2: slices carry their spacing
#: The settings that change the slices a load produces.
SETTINGS = ("image_size", "crop_fraction", "percentiles", "msd_channel", "empty_mask", "labels")


def cache_dir() -> Path:
    """``$GANSEG_CACHE`` if set, else ``~/.cache/ganseg``."""
    env = os.environ.get("GANSEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ganseg"


def settings_of(data_cfg, layout: str) -> dict:
    """The preprocessing settings of a ``DataSettings`` that decide the slices, as plain data."""
    values = {k: getattr(data_cfg, k) for k in SETTINGS}
    values["percentiles"] = list(values["percentiles"])
    return {"layout": layout, "version": PREPROCESS_VERSION, **values}


def _files(cases: list[Case]) -> list[Path]:
    files = []
    for case in cases:
        for p in (case.image, case.mask):
            files.append(p)
            # MetaImage headers point at a separate raw/zraw payload.
            if p.suffix.lower() in (".mhd", ".nhdr"):
                files.extend(sorted(q for q in p.parent.glob(p.stem + ".*") if q != p and q.suffix.lower()
                                    in (".raw", ".zraw", ".gz", ".bz2")))
    return files


def stat_key(cases: list[Case], settings: dict) -> str:
    """Cache key from file paths, sizes, mtimes and settings (cheap: no file reads)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for case in cases:
        h.update(case.patient.encode())
    for p in _files(cases):
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def fingerprint(cases: list[Case], settings: dict) -> str:
    """Content hash of the input files plus the settings (independent of where the files are)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for case in cases:
        h.update(case.patient.encode())
    for p in _files(cases):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def load_entry(root: Path, key: str) -> tuple[SliceSet, dict] | None:
    """A cached SliceSet and its metadata, or None on a miss or a damaged entry (warned, then rebuilt)."""
    npz, meta = root / f"{key}.npz", root / f"{key}.json"
    if not (npz.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        if not isinstance(info, dict) or "fingerprint" not in info:
            raise ValueError(f"{meta} has no fingerprint")
        return SliceSet.load(npz), info
    except Exception as exc:  # truncated zip, bad JSON, a missing array: a cache entry is never worth stopping for
        warnings.warn(f"slice cache entry {npz} is damaged ({type(exc).__name__}: {exc}); rebuilding it from the "
                      "data (nothing else is affected)", stacklevel=2)
        return None


def save_entry(root: Path, key: str, ss: SliceSet, info: dict) -> None:
    """Write atomically; the .json is written last and marks completeness."""
    atomic_write(root / f"{key}.npz", ss.save)
    atomic_write(root / f"{key}.json", json.dumps(info, indent=1))


def empty_sliceset(size: int) -> SliceSet:
    return SliceSet(np.zeros((0, size, size), np.float32), np.zeros((0, size, size), np.uint8),
                    np.zeros((0, 2), np.float32), np.zeros(0, dtype=str), np.zeros(0, np.int64))
