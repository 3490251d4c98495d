"""Data: volume layouts, canonical orientation, 2D slices, splits, cache and the phantom.

The public API used by the rest of the toolkit::

    cache_dir() -> Path
    load_dataset(data_cfg, cache=None) -> (SliceSet, fingerprint)
    select_slices(ss, data_cfg, seed) -> SliceSet
    split_patients(patients, split_cfg) -> {"train", "val", "test"}
    phantom.write_phantom(out, n_patients=32, seed=0) -> Path
    inspect.inspect_dataset(path, layout="auto", **data_cfg) -> dict; format_inspection(info) -> str
"""

from __future__ import annotations

from toolkit.data.cache import cache_dir
from toolkit.data.errors import DataError
from toolkit.data.loading import load_dataset, phantom_dir, select_slices
from toolkit.data.slices import SliceSet
from toolkit.data.splits import split_patients

__all__ = ["DataError", "SliceSet", "cache_dir", "load_dataset", "phantom_dir", "select_slices", "split_patients"]
