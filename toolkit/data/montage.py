"""A PNG montage of slices with the mask outline, to look at a data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from toolkit.data.slices import SliceSet


def montage(ss: SliceSet, rows: np.ndarray, columns: int = 6, outline: tuple[int, int, int] = (255, 40, 40),
            scale: int = 2) -> np.ndarray:
    """An RGB uint8 grid of the chosen slices (images in [-1, 1]) with mask outlines."""
    tiles = []
    for r in rows:
        g = np.clip((ss.images[r] + 1) / 2, 0, 1)
        rgb = np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)
        m = ss.masks[r].astype(bool)
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = outline
        tiles.append(np.kron(rgb, np.ones((scale, scale, 1), np.uint8)))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    lines = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(lines, axis=0)


def save_montage(ss: SliceSet, path: str | Path, per_patient: int = 3, patients: int = 6, scale: int = 2) -> Path:
    """Write a montage: for each of the first ``patients`` patients, slices near the gland's
    apex, middle and base (``per_patient`` of them), one patient per row."""
    from PIL import Image

    rows = []
    for patient in ss.patients()[:patients]:
        idx = np.flatnonzero(ss.patient == patient)
        gland = idx[ss.has_gland()[idx]]
        pick = gland if len(gland) else idx
        rows.extend(pick[np.linspace(0, len(pick) - 1, per_patient).round().astype(int)])
    grid = montage(ss, np.asarray(rows), columns=per_patient, scale=scale)
    Image.fromarray(grid).save(path)
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    """``python -m toolkit.data.montage --out docs/phantom_montage.png``: the phantom montage in the docs."""
    import argparse
    import tempfile

    from toolkit.data.loading import load_dataset
    from toolkit.data.phantom import write_phantom

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", default="docs/phantom_montage.png")
    ap.add_argument("--data", default=None, help="a data folder instead of a fresh phantom (keep real-data images local)")
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args(argv)
    cfg = {"image_size": args.size, "crop_fraction": 1.0, "percentiles": [0.5, 99.5], "cache": False}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data or write_phantom(Path(tmp) / "phantom", n_patients=args.patients, seed=args.seed)
        ss, _ = load_dataset(dict(cfg, path=str(path)))
        print(save_montage(ss, args.out, per_patient=4, patients=args.patients, scale=1))


if __name__ == "__main__":
    main()
