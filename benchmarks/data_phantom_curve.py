"""How hard is the phantom? Test Dice of the real-data U-Net against the number of training patients.

    python benchmarks/data_phantom_curve.py [--profile quick] [--patients 1 2 4 8 16] [--seed 0] [--threads 1]

Trains the profile's dice_gain U-Net (its baseline arm) once per training-set
size on the embedded phantom; val and test patients stay fixed, and smaller
training sets are subsets of larger ones. Writes
benchmarks/results/data_phantom_curve.md. The issue's target: clearly
imperfect Dice (about 0.5-0.85) with 4 patients, rising with more.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.config import resolve  # noqa: E402
from toolkit.experiment import prepare_data  # noqa: E402
from toolkit.runtime import reproducible  # noqa: E402
from toolkit.seg.predict import score_patients  # noqa: E402
from toolkit.seg.train import Pool, train_unet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--patients", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for n in args.patients:
        config = resolve(profile=args.profile, overrides=[f"split.n_train_patients={n}", "run.evaluators=[dice_gain]"])
        seg = config.seg
        data = prepare_data(config)
        start = time.perf_counter()
        with reproducible(args.threads):
            result = train_unet([Pool.of(data.train)], data.val, seg, args.seed)
            scores = score_patients(result.model, data.test)
        dice = np.array([s.dice for s in scores])
        rows.append((n, len(data.train), float(dice.mean()), float(dice.std()), float(dice.min()),
                     result.best_step, time.perf_counter() - start))
        print(f"{n} patients: test Dice {dice.mean():.3f} +- {dice.std():.3f}", flush=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    table = ["| training patients | training slices | test Dice (mean) | std over test patients | worst patient "
             "| best val step | seconds |", "|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {n} | {s} | {m:.3f} | {sd:.3f} | {lo:.3f} | {b} | {t:.0f} |" for n, s, m, sd, lo, b, t in rows]
    command = (f"python benchmarks/data_phantom_curve.py --profile {args.profile} --patients "
               f"{' '.join(map(str, args.patients))} --seed {args.seed} --threads {args.threads}")
    text = (f"# Phantom difficulty: U-Net test Dice vs training patients\n\nCommand: `{command}`\n\n"
            f"U-Net: {seg}, one seed, {len(data.test.patients())} fixed test patients; `{uptime}` at the end.\n\n"
            + "\n".join(table) + "\n")
    print(text)
    (Path(__file__).resolve().parent / "results" / "data_phantom_curve.md").write_text(text)


if __name__ == "__main__":
    main()
