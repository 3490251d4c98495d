"""``data inspect``: what the loaders find in a folder, before any training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from toolkit.data.errors import DataError
from toolkit.data.layouts import find_cases
from toolkit.data.preprocess import check_labels, check_pair, pick_channel
from toolkit.data.volumes import Volume, axial_slices, read_volume, stored_orientation

#: Below this share of a gland slice, a 64 x 64 slice gives the gland only a few dozen pixels.
SMALL_GLAND_SHARE = 0.03
CROP_MARGIN = 0.1  # extra fraction of the field of view kept around the widest gland in a suggested crop
NAMED = 3  # patients named per problem or warning; the rest are counted


def name_some(cases: list[dict], key: str = "mask", limit: int = NAMED) -> str:
    """``p1 (path), p2 (path) and 5 more``: the patients behind a finding, so a user can open the files."""
    named = ", ".join(f"{c['patient']} ({c[key]})" for c in cases[:limit])
    return named + (f" and {len(cases) - limit} more" if len(cases) > limit else "")


def gland_extent(gland_xyz: np.ndarray, spacing_xyz: tuple[float, float, float]) -> tuple[float, float]:
    """(share of a gland slice's area that is gland, centre-crop fraction that still holds the whole gland).

    Both on the radiological axial slices the loader makes; the crop fraction is
    in millimetres of the shorter side, as ``data.crop_fraction`` is.
    """
    gland = axial_slices(gland_xyz)  # [Z, rows, cols]
    on = gland.reshape(len(gland), -1).any(axis=1)
    if not on.any():
        return 0.0, 0.0
    share = float(gland[on].mean())
    rows, cols = np.nonzero(gland.any(axis=0))
    n_r, n_c = gland.shape[1:]
    sy, sx = spacing_xyz[1], spacing_xyz[0]
    # Distance (mm) from the slice centre to the farthest gland pixel edge, per axis.
    reach_r = max(abs(rows.min() - n_r / 2), abs(rows.max() + 1 - n_r / 2)) * sy
    reach_c = max(abs(cols.min() - n_c / 2), abs(cols.max() + 1 - n_c / 2)) * sx
    side = min(n_r * sy, n_c * sx)
    return share, float(min(1.0, 2 * max(reach_r, reach_c) / side))


def inspect_dataset(path: str | Path, layout: str = "auto", **data_cfg) -> dict:
    """Read every case and summarise it; bad files raise :class:`DataError` naming them.

    Args:
        path: data folder (or .csv manifest for the pairs layout).
        layout: ``auto`` or a layout name.
        **data_cfg: other ``data`` config keys (image_name, mask_name, msd_channel).

    Returns:
        ``layout``, ``path``, ``patients`` (count), ``slices`` (total axial
        slices), ``gland_slices``, ``shapes`` / ``spacings`` (distinct canonical
        values with counts), ``label_values`` (sorted, over all masks),
        ``foreground_fraction`` (gland voxels / all voxels), ``gland_share``
        (mean share of a gland slice that is gland), ``suggested_crop_fraction``
        (the centre crop that keeps every patient's gland, plus a margin), ``empty_masks``
        (patients without foreground), ``problems`` (what would stop a run with
        the default settings, each with the setting that lets it through),
        ``warnings`` (spacing or stored orientation unlike most volumes, placeholder
        spacing), each naming the patients and files behind it (a few, then a count),
        and ``cases`` (per patient details).
    """
    channel = int(data_cfg.get("msd_channel", 0))
    layout, cases = find_cases(Path(path), layout, data_cfg.get("image_name"), data_cfg.get("mask_name"), channel)
    shapes: dict[str, int] = {}
    spacings: dict[str, int] = {}
    labels: set[int] = set()
    fg = total = slices = gland_slices = 0
    per_case, empty = [], []
    for case in cases:
        image, mask = read_volume(case.image), read_volume(case.mask)
        arr = pick_channel(image, channel)
        check_pair(Volume(arr, image.affine, image.path), mask)
        lab = check_labels(mask, case.allowed_labels)
        gland = lab > 0
        shape = "x".join(str(n) for n in arr.shape)
        spacing = " x ".join(f"{v:.3g}" for v in image.spacing)
        shapes[shape] = shapes.get(shape, 0) + 1
        spacings[spacing] = spacings.get(spacing, 0) + 1
        case_labels = sorted(int(v) for v in np.unique(lab))
        share, needed = gland_extent(gland, image.spacing)
        labels.update(case_labels)
        n_gland = int(gland.any(axis=(0, 1)).sum())
        slices += arr.shape[2]
        gland_slices += n_gland
        fg += int(gland.sum())
        total += gland.size
        if not gland.any():
            empty.append(case.patient)
        per_case.append({"patient": case.patient, "image": str(case.image), "mask": str(case.mask),
                         "shape": shape, "spacing": spacing, "orientation": stored_orientation(case.image),
                         "labels": case_labels, "slices": int(arr.shape[2]),
                         "gland_slices": n_gland, "gland_share": share, "crop_needed": needed,
                         "channels": int(image.array.shape[3]) if image.array.ndim == 4 else 1,
                         "intensity_range": [float(arr.min()), float(arr.max())]})
    if not per_case:
        raise DataError(f"{path}: no cases found")
    shares = [c["gland_share"] for c in per_case if c["gland_slices"]]
    gland_share = float(np.mean(shares)) if shares else 0.0
    suggested = round(min(1.0, max((c["crop_needed"] for c in per_case), default=1.0) + CROP_MARGIN), 2)
    problems, warnings = [], []
    if empty:
        behind = [c for c in per_case if c["patient"] in set(empty)]
        problems.append(f"{len(empty)} patient(s) with an empty mask: {name_some(behind)}; a run stops on them, "
                        "data.empty_mask: skip leaves them out")
    if len(labels - {0}) > 1:
        where = "; ".join(f"label {v} in {name_some([c for c in per_case if v in c['labels']])}"
                          for v in sorted(labels - {0}))
        problems.append(f"masks hold several labels {sorted(labels - {0})} ({where}): a run counts all > 0 as "
                        "gland and warns; data.labels: [..] chooses the gland labels")
    warnings += _minority("spacing", "spacing", per_case, "voxel spacing (mm)",
                          "the centre crop is a share of each volume's own field of view, resized to data.image_size, "
                          "so another spacing often shows the gland at another size in pixels; check those headers")
    warnings += _minority("orientation", "image", per_case, "stored orientation",
                          "every volume is reoriented to RAS on load, so this is only a problem if a header is "
                          "wrong: look at those patients' slices (`data inspect` cannot tell)")
    placeholder = [c for c in per_case if c["spacing"] == "1 x 1 x 1"]
    if placeholder:
        warnings.append(f"{len(placeholder)} of {len(per_case)} volume(s) say 1 x 1 x 1 mm, often a placeholder "
                        f"for lost spacing: {name_some(placeholder, 'image')}; spacing-based figures (HD95, volumes) "
                        "are then in voxels, not mm")
    return {"layout": layout, "path": str(path), "patients": len(cases), "slices": slices, "problems": problems,
            "warnings": warnings,
            "gland_share": gland_share, "suggested_crop_fraction": suggested,
            "gland_slices": gland_slices, "shapes": shapes, "spacings": spacings, "label_values": sorted(labels),
            "foreground_fraction": fg / max(total, 1), "empty_masks": empty, "cases": per_case}


def _minority(key: str, file_key: str, cases: list[dict], what: str, advice: str) -> list[str]:
    """A warning naming the patients whose ``key`` differs from the most common value, if any do."""
    counts = Counter(c[key] for c in cases)
    if len(counts) < 2:
        return []
    common = counts.most_common(1)[0][0]
    odd = [c for c in cases if c[key] != common]
    by_value = "; ".join(f"{value} in {name_some([c for c in odd if c[key] == value], file_key)}"
                         for value in sorted({c[key] for c in odd}))
    return [f"{len(odd)} of {len(cases)} volume(s) differ from the usual {what} {common}: {by_value}; {advice}"]


def format_inspection(info: dict) -> str:
    """A short human-readable report of :func:`inspect_dataset`'s result."""
    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} ({v})" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))

    lines = [
        f"data:        {info['path']}",
        f"layout:      {info['layout']}",
        f"patients:    {info['patients']}",
        f"slices:      {info['slices']} axial ({info['gland_slices']} with gland)",
        f"shapes:      {counts(info['shapes'])}   (canonical RAS voxel order, x y z)",
        f"spacing mm:  {counts(info['spacings'])}",
        f"labels:      {info['label_values']}   (> 0 is the gland)",
        f"class balance: gland {100 * info['foreground_fraction']:.2f}% of voxels",
        f"gland size:  {100 * info['gland_share']:.1f}% of a gland slice at data.crop_fraction 1.0; a centre crop of "
        f"{info['suggested_crop_fraction']} keeps every gland with a margin "
        f"({100 * min(1.0, info['gland_share'] / info['suggested_crop_fraction'] ** 2):.1f}% of the slice)",
    ]
    if info["gland_share"] < SMALL_GLAND_SHARE:
        lines.append(f"HINT: the gland is small in the slice; at 64 x 64 it gets about "
                     f"{info['gland_share'] * 64 * 64:.0f} pixels. Use --set data.crop_fraction="
                     f"{info['suggested_crop_fraction']} (the default is 1.0: the whole field of view)")
    ranges = [c["intensity_range"] for c in info["cases"]]
    lines.append(f"intensities: max per volume from {min(r[1] for r in ranges):g} to {max(r[1] for r in ranges):g}"
                 f" (normalised per volume)")
    lines += [f"WARNING: {w}" for w in info.get("warnings", [])]
    lines += [f"PROBLEM: {p}" for p in info["problems"]]
    return "\n".join(lines)
