"""Phantom generation time and cold vs warm (cached) load time of the slice pipeline.

Run from the repository root: ``python benchmarks/data_cache.py [--patients 32] [--realdata DIR]``.
Prints a table and writes ``benchmarks/results/data_cache.md``. Uses a temporary
cache folder, so it never touches the user's cache. Timings depend on the machine's
load, which is recorded with them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.data import load_dataset  # noqa: E402
from toolkit.data.phantom import write_phantom  # noqa: E402
from toolkit.settings import DataSettings  # noqa: E402

CFG = DataSettings(image_size=64, crop_fraction=1.0)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=32)
    ap.add_argument("--realdata", default=os.environ.get("GANSEG_REALDATA"),
                    help="promise12-dev folder for real-data rows (default: $GANSEG_REALDATA)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_gen, _ = timed(lambda: write_phantom(tmp / "phantom", n_patients=args.patients, seed=0))
        rows.append((f"phantom generation ({args.patients} patients, 128x128x24)", t_gen, ""))
        sets = [("phantom", tmp / "phantom")]
        if args.realdata:
            sets += [("real nifti folders", Path(args.realdata) / "nifti"), ("real mhd folders", Path(args.realdata) / "mhd")]
        for name, path in sets:
            if not path.exists():
                continue
            cache = tmp / f"cache-{name.replace(' ', '_')}"
            t_cold, (ss, _) = timed(lambda path=path, cache=cache: load_dataset(replace(CFG, path=str(path)), cache))
            t_warm, _ = timed(lambda path=path, cache=cache: load_dataset(replace(CFG, path=str(path)), cache))
            rows.append((f"{name}: cold load ({len(ss)} slices, 64 px)", t_cold, ""))
            rows.append((f"{name}: warm load (cache hit)", t_warm, f"{t_cold / t_warm:.0f}x faster"))
    load = os.getloadavg()
    lines = [
        "# Data: phantom generation and slice-cache timings",
        "",
        f"Command: `python benchmarks/data_cache.py --patients {args.patients}"
        + (" --realdata DIR`" if args.realdata else "`"),
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min; other jobs share the CPUs).",
        "",
        "| step | seconds | note |",
        "|---|---:|---|",
        *[f"| {name} | {sec:.2f} | {note} |" for name, sec, note in rows],
        "",
        "Cold load = read volumes, check, reorient, normalise, resize, hash the files' contents (fingerprint),",
        "write the cache entry. Warm load = stat the files, read one .npz.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results" / "data_cache.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
