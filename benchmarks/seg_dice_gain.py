"""Wall time of one dice_gain evaluation, with a cold and a warm baseline cache.

    python benchmarks/seg_dice_gain.py [--steps N] [--seeds K] [--threads T] [--controls a,b]

Defaults are the evaluator's own (the quick profile). The data is a stand-in
with the quick profile's shape (4 train, 4 val, 8 test patients of 16 slices
at 64 x 64: noisy ellipses with decoys), because wall time depends on steps,
seeds and arms, not on what the pixels show; the synthetic set is the training
set plus noise. Writes benchmarks/results/seg_dice_gain.md with the machine
load, since other processes on a shared CPU slow every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.data.slices import SliceSet  # noqa: E402
from toolkit.plugin import EvalContext  # noqa: E402
from toolkit.registry import EVALUATORS  # noqa: E402
from toolkit.seg.baseline import BaselineStore  # noqa: E402
from toolkit.settings import SegSettings  # noqa: E402


def stand_in(n: int, seed: int, prefix: str, size: int = 64, slices: int = 16) -> SliceSet:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    images, masks, patient, index = [], [], [], []
    for p in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        ry, rx = rng.uniform(0.1, 0.2, 2) * size
        dy, dx = rng.uniform(0.15, 0.85, 2) * size
        for z in range(slices):
            s = np.sin(np.pi * (z + 0.5) / slices) * 1.2 - 0.2
            inside = (((yy - cy) / max(ry * s, 1e-3)) ** 2 + ((xx - cx) / max(rx * s, 1e-3)) ** 2 <= 1) & (s > 0.15)
            decoy = ((yy - dy) / (0.1 * size)) ** 2 + ((xx - dx) / (0.12 * size)) ** 2 <= 1
            images.append(np.clip(-0.5 + 0.25 * rng.standard_normal((size, size)) + 0.5 * decoy + 0.7 * inside,
                                  -1, 1).astype(np.float32))
            masks.append(inside.astype(np.uint8))
            patient.append(f"{prefix}{p:02d}")
            index.append(z)
    m = np.stack(masks)
    return SliceSet(np.stack(images), m, np.zeros((len(m), 2), np.float32), np.array(patient),
                    np.array(index, dtype=np.int64))


def main() -> None:
    defaults = {**dataclasses.asdict(SegSettings()),
                **{k: v.default for k, v in inspect.signature(EVALUATORS.get("dice_gain")).parameters.items()}}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=defaults["steps"])
    parser.add_argument("--seeds", type=int, default=defaults["seeds"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--controls", default="", help="comma-separated control arms")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # per-arm progress
    controls = [c for c in args.controls.split(",") if c]

    train = stand_in(4, 1, "train")
    rng = np.random.default_rng(0)
    noisy = np.clip(train.images + 0.2 * rng.standard_normal(train.images.shape), -1, 1).astype(np.float32)
    synthetic = SliceSet(noisy, train.masks, train.cond, np.full(len(train), "synthetic"),
                         np.arange(len(train), dtype=np.int64))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("cold cache (trains the baselines)", "warm cache (baselines from disk)"):
            val, device, cache = stand_in(4, 2, "val"), torch.device("cpu"), Path(tmp) / "cache"
            seg = SegSettings(steps=args.steps, threads=args.threads)
            ctx = EvalContext(train=train, val=val, test=stand_in(8, 3, "test"),
                              synthetic=synthetic, device=device, run_dir=Path(tmp) / "run",
                              cache_dir=cache, data_fingerprint="stand-in",
                              baselines=BaselineStore(train, val, "stand-in", seg, device, cache), seg=seg)
            evaluator = EVALUATORS.get("dice_gain")(seeds=args.seeds, controls=tuple(controls))
            load = os.getloadavg()[0]
            start = time.perf_counter()
            metrics = evaluator.evaluate(ctx)
            rows.append((label, time.perf_counter() - start, metrics["baselines_trained"], load,
                         metrics["dice_baseline"], metrics["dice_gain"]))
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    arms = 1 + 1 + int(defaults["tstr"]) + len(controls)
    table = ["| run | wall s | baselines trained | load avg at start | baseline Dice | gain |",
             "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r[0]} | {r[1]:.1f} | {r[2]:.0f} | {r[3]:.2f} | {r[4]:.3f} | {r[5]:+.3f} |" for r in rows]
    text = "\n".join(table)
    command = (f"python benchmarks/seg_dice_gain.py --steps {args.steps} --seeds {args.seeds} "
               f"--threads {args.threads}" + (f" --controls {args.controls}" if controls else ""))
    info = (f"{args.seeds} seeds x {arms} arms x {args.steps} steps, batch {defaults['batch_size']}, "
            f"threads {args.threads}; `{uptime}` at the end")
    print(info + "\n\n" + text)
    out = Path(__file__).resolve().parent / "results" / "seg_dice_gain.md"
    out.write_text(f"# dice_gain wall time, cold vs warm baseline cache\n\nCommand: `{command}`\n\n{info}\n\n"
                   f"{text}\n")


if __name__ == "__main__":
    main()
