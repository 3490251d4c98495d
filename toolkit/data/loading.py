"""Loading a data set into a SliceSet (with the on-disk cache) and choosing training slices."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from toolkit.data import cache as cache_mod
from toolkit.data.errors import DataError
from toolkit.data.layouts import find_cases
from toolkit.data.preprocess import EmptyMask, preprocess_case
from toolkit.data.slices import SliceSet
from toolkit.settings import DataSettings

log = logging.getLogger(__name__)


def phantom_dir(n_patients: int, seed: int, cache: Path | None = None) -> Path:
    """Where the embedded phantom of (n, seed) lives; written on first use."""
    from toolkit.data.phantom import PHANTOM_VERSION, write_phantom

    root = cache if cache is not None else cache_mod.cache_dir()
    tag = hashlib.sha256(f"{n_patients}|{seed}|{PHANTOM_VERSION}".encode()).hexdigest()[:12]
    out = Path(root) / f"phantom-{tag}"
    if not (out / "dataset.json").is_file():  # dataset.json is written last: its presence means complete
        tmp = Path(root) / f".phantom-{tag}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("writing the embedded phantom (%d patients, seed %d) to %s", n_patients, seed, out)
        write_phantom(tmp, n_patients=n_patients, seed=seed)
        if (out / "dataset.json").is_file():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
    return out


def label_report(labels_found: dict[str, list[int]], setting) -> dict:
    """What the masks held and what counted as gland; warns when several labels were merged into the gland."""
    values = sorted({v for vs in labels_found.values() for v in vs})
    gland = values if setting == "nonzero" else [1] if setting == "binary" else sorted(setting)
    if setting == "nonzero" and len(values) > 1:
        warnings.warn(f"masks hold labels {values} (zonal masks, e.g. PZ/TZ, or a mistake?): all of them count as "
                      "gland (data.labels: nonzero). Set data.labels to the gland labels, e.g. data.labels=[1, 2], "
                      "or data.labels=binary to refuse anything but 0/1", stacklevel=3)
    return {"setting": setting, "found": values, "gland": [v for v in gland if v in values] if values else gland}


def load_dataset(data_cfg: DataSettings, cache: Path | None = None,
                 report: dict | None = None) -> tuple[SliceSet, str]:
    """All axial slices of every patient, and the data fingerprint.

    Slices keep volume order within each patient; patients are sorted by id.
    With ``data_cfg["path"]`` None the embedded phantom is written once under
    the cache folder and loaded from there through the ordinary msd path.

    Args:
        data_cfg: the ``data`` config section.
        cache: cache root; default :func:`toolkit.data.cache.cache_dir`.

        report: a dict to fill with what loading found (``labels``: the mask
            values seen and those counted as gland; ``skipped`` patients).

    Returns:
        (slices, fingerprint): the fingerprint hashes the input files' contents
        and the preprocessing settings.

    Raises:
        DataError: any bad input, naming the file and what would be right.
    """
    root = Path(cache) if cache is not None else cache_mod.cache_dir()
    path, layout = data_cfg.path, data_cfg.layout
    if path is None:
        path = phantom_dir(data_cfg.phantom_patients, data_cfg.phantom_seed, root)
        layout = "msd"
    empty_mode = data_cfg.empty_mask
    layout, cases = find_cases(Path(path).expanduser(), layout, data_cfg.image_name, data_cfg.mask_name,
                               data_cfg.msd_channel)
    settings = cache_mod.settings_of(data_cfg, layout)
    use_cache = data_cfg.cache
    slices_root = root / "slices"
    key = cache_mod.stat_key(cases, settings)
    if use_cache:
        hit = cache_mod.load_entry(slices_root, key)
        if hit is not None:
            ss, info = hit
            for patient in info.get("skipped", []):
                warnings.warn(f"patient {patient}: mask is empty, skipped (data.empty_mask: skip)", stacklevel=2)
            if report is not None:
                report.update(labels=label_report(info.get("labels", {}), data_cfg.labels),
                              skipped=info.get("skipped", []))
            return ss, info["fingerprint"]

    parts, skipped, labels_found = [], [], {}
    for case in cases:
        try:
            arrays = preprocess_case(case, data_cfg)
        except EmptyMask as exc:
            if empty_mode == "error":
                raise
            warnings.warn(str(exc), stacklevel=2)
            skipped.append(case.patient)
            continue
        n = len(arrays["images"])
        labels_found[case.patient] = arrays["labels"]
        parts.append(SliceSet(arrays["images"], arrays["masks"], arrays["cond"],
                              np.full(n, case.patient), arrays["slice_index"], arrays["spacing"]))
    if not parts:
        raise DataError(f"{path}: every patient was skipped (empty masks); no slices to load")
    labels = label_report(labels_found, data_cfg.labels)
    if report is not None:
        report.update(labels=labels, skipped=skipped)
    ss = SliceSet.concat(parts)
    ss.patient = ss.patient.astype(str)
    fp = cache_mod.fingerprint(cases, settings)
    if use_cache:
        cache_mod.save_entry(slices_root, key, ss, {"fingerprint": fp, "skipped": skipped, "labels": labels_found,
                                                    "data": str(path), "settings": settings})
    return ss, fp


def select_slices(ss: SliceSet, data_cfg: DataSettings, seed: int) -> SliceSet:
    """The training slices: all, or each patient's gland extent plus a margin.

    With ``slices: gland`` every slice within ``slice_margin`` of a patient's
    gland extent is a candidate; all gland slices are kept, and the empty
    candidates are subsampled (seeded) so that at most ``empty_fraction`` of
    the kept slices have no gland.
    """
    if data_cfg.slices == "all":
        return ss
    margin, frac = data_cfg.slice_margin, data_cfg.empty_fraction
    rng = np.random.default_rng(seed)
    has = ss.has_gland()
    keep = np.zeros(len(ss), dtype=bool)
    for patient in ss.patients():
        rows = np.flatnonzero(ss.patient == patient)
        z = ss.slice_index[rows]
        gland_z = z[has[rows]]
        if len(gland_z) == 0:
            continue
        window = (z >= gland_z.min() - margin) & (z <= gland_z.max() + margin)
        full, empty = rows[window & has[rows]], rows[window & ~has[rows]]
        cap = int(np.floor(frac * len(full) / (1 - frac) + 1e-9))
        keep[full] = True
        if len(empty):
            keep[rng.permutation(empty)[:cap]] = True
    return ss.select(keep)
