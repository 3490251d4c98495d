"""Baseline Dice, oracle gain and noise gain of dice_gain on the embedded phantom (quick profile split).

    python benchmarks/seg_phantom_gain.py [--profile quick] [--set KEY=VALUE ...]

The evaluator is built from the profile's ``evaluators.dice_gain`` settings, so
the numbers are those a run of that profile reports; ``--set seeds=1`` etc.
override single dice_gain settings.

Oracle: the real training slices themselves as the "synthetic" set. Noise:
uniform noise images with random disc masks. Writes
benchmarks/results/seg_phantom_gain.md.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.config import resolve  # noqa: E402
from toolkit.data.slices import SliceSet  # noqa: E402
from toolkit.experiment import build_evaluators, prepare_data  # noqa: E402
from toolkit.plugin import EvalContext  # noqa: E402
from toolkit.seg.baseline import BaselineStore  # noqa: E402


def noise_like(train: SliceSet, seed: int = 0) -> SliceSet:
    rng = np.random.default_rng(seed)
    n, size = len(train), train.image_size
    yy, xx = np.mgrid[:size, :size]
    masks = np.stack([((yy - rng.uniform(0.2, 0.8) * size) ** 2 + (xx - rng.uniform(0.2, 0.8) * size) ** 2
                       <= (rng.uniform(0.05, 0.15) * size) ** 2) for _ in range(n)]).astype(np.uint8)
    return SliceSet(rng.uniform(-1, 1, (n, size, size)).astype(np.float32), masks, np.zeros((n, 2), np.float32),
                    np.full(n, "synthetic"), np.arange(n, dtype=np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. --set seg.steps=100 or --set evaluators.dice_gain.seeds=5")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = resolve(profile=args.profile, overrides=["split.n_train_patients=4", "run.evaluators=[dice_gain]"]
                     + args.overrides)
    settings = build_evaluators(config)["dice_gain"]
    data = prepare_data(config)
    oracle = SliceSet(data.train.images, data.train.masks, data.train.cond, np.full(len(data.train), "synthetic"),
                      np.arange(len(data.train), dtype=np.int64))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, synthetic in (("oracle", oracle), ("noise", noise_like(data.train))):
            device, cache = torch.device("cpu"), Path(tmp) / "cache"
            ctx = EvalContext(train=data.train, val=data.val, test=data.test, synthetic=synthetic,
                              device=device, run_dir=Path(tmp) / name, cache_dir=cache,
                              data_fingerprint=data.fingerprint,
                              baselines=BaselineStore(data.train, data.val, data.fingerprint, config.seg, device,
                                                      cache),
                              seg=config.seg)
            start = time.perf_counter()
            m = build_evaluators(config)["dice_gain"].evaluate(ctx)
            rows.append((name, m, time.perf_counter() - start))
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    table = ["| synthetic set | baseline Dice | augmented Dice | gain [95% CI] | label fidelity | wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {n} | {m['dice_baseline']:.3f} | {m['dice_augmented']:.3f} | {m['dice_gain']:+.3f} "
              f"[{m['dice_gain_ci_low']:+.3f}, {m['dice_gain_ci_high']:+.3f}] | {m['label_fidelity_dice']:.3f} "
              f"| {t:.0f} |" for n, m, t in rows]
    command = "python benchmarks/seg_phantom_gain.py --profile " + args.profile + "".join(
        f" --set {o}" for o in args.overrides)
    text = (f"dice_gain settings: {config.seg}, seeds {settings.seeds}, ratio {settings.ratio}\n\n"
            f"Phantom, {args.profile} profile split with 4 training patients ({len(data.train)} train slices, "
            f"{len(data.test.patients())} test patients); `{uptime}` at the end\n\n" + "\n".join(table))
    print(text)
    out = Path(__file__).resolve().parent / "results" / "seg_phantom_gain.md"
    out.write_text(f"# dice_gain on the phantom: baseline, oracle and noise\n\nCommand: `{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
