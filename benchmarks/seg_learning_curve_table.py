"""Markdown table of seg_learning_curve.py's JSON lines: mean test Dice (and spread) per dataset, variant, steps.

    python benchmarks/seg_learning_curve_table.py ROWS.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["augment"], r["schedule"], r["lr"], r["steps"])].append(r)
    print("| data | augment | schedule | lr | steps | test Dice (mean of seeds) | per seed | best val step | "
          "late_rise | converged | wall s (all seeds) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(groups):
        g = groups[key]
        dice = [r["test_dice"] for r in g]
        seeds = ", ".join(f"{d:.3f}" for d in dice)
        steps = ", ".join(str(int(r["best_step"])) for r in g)
        rises = ", ".join(f"{r['late_rise']:+.3f}" for r in g)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:g} | {key[4]} | {np.mean(dice):.3f} | "
              f"{seeds} | {steps} | {rises} | {sum(int(r['converged']) for r in g)}/{len(g)} | "
              f"{g[0]['wall_seconds_all_seeds']:.0f} |")
    r = rows[0]
    print(f"\nCPU: {r['cpu']}, {r['cores']} cores, flags {' '.join(r['flags'])}; U-Nets in {r['processes']} "
          "1-thread processes; load at start of the first row " f"{r['load']:.2f}.")


if __name__ == "__main__":
    main()
