"""The real-only baseline U-Net's learning curve: test Dice against optimizer steps, per LR schedule.

    python benchmarks/seg_learning_curve.py [--data DIR --set KEY=VALUE ...] [--steps 150,300,...]
        [--variants constant:0.001,cosine:0.001,cosine:0.003] [--seeds 2] [--out FILE.json]

Each (variant, steps) trains ``--seeds`` baselines (U-Net seeds 0..) on the quick profile's split
(n_train_patients 4) with only ``seg.steps``, ``seg.schedule`` and ``seg.lr`` changed, through
``train_unets`` (seg.processes as configured: one 1-thread process per idle core), and scores each on
the test patients (mean 3D Dice per patient). Also records each U-Net's convergence facts (best val
step, the val Dice rise over the last quarter). The JSON rows feed benchmarks/results/seg_learning_curve.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.config import resolve  # noqa: E402
from toolkit.experiment import prepare_data  # noqa: E402
from toolkit.runtime import resolve_precision  # noqa: E402
from toolkit.seg.batched import Job, plan, train_unets  # noqa: E402
from toolkit.seg.predict import score_patients  # noqa: E402
from toolkit.seg.train import Pool  # noqa: E402


def cpu_facts() -> dict[str, object]:
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "load": os.getloadavg()[0],
            "flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags.split()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder of real scans (default: the phantom)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", default="150,300,600,1200,2400")
    parser.add_argument("--variants", default="constant:0.001,cosine:0.001,cosine:0.003",
                        help="schedule:lr pairs")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--augment", default="standard")
    parser.add_argument("--out", required=True, help="JSON lines file the rows are appended to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = ["split.n_train_patients=4", f"seg.augment={args.augment}"] + args.overrides
    if args.data:
        overrides.append(f"data.path={args.data}")
    config = resolve(profile="quick", overrides=overrides)
    data = prepare_data(config)
    device = torch.device("cpu")
    dataset = "real" if args.data else "phantom"
    facts = cpu_facts()
    for variant in args.variants.split(","):
        schedule, lr = variant.split(":")
        for steps in [int(s) for s in args.steps.split(",")]:
            seg = replace(config.seg, steps=steps, schedule=schedule, lr=float(lr))
            how = plan(seg, device)
            t0 = time.perf_counter()
            results = train_unets([Job([Pool.of(data.train)], s) for s in range(args.seeds)], data.val, seg,
                                  device, processes=how.processes, threads=how.threads or 1)
            seconds = time.perf_counter() - t0
            amp = resolve_precision(seg.precision, device)
            for seed, result in enumerate(results):
                test = [s.dice for s in score_patients(result.model, data.test, device=device, amp_dtype=amp,
                                                       channels_last=seg.channels_last)]
                row = {"dataset": dataset, "schedule": schedule, "lr": float(lr), "steps": steps, "seed": seed,
                       "augment": args.augment, "test_dice": float(np.mean(test)),
                       "best_val_dice": result.best_val_dice, **result.convergence(steps),
                       "wall_seconds_all_seeds": seconds, "processes": how.processes,
                       "n_test_patients": len(test), **facts}
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
