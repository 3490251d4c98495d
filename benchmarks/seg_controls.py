"""What dice_gain can resolve: positive control, oracle copies and noise on the phantom, before and after.

    python benchmarks/seg_controls.py [--designs before,after] [--set KEY=VALUE ...]

Quick profile, 4 training patients, 2 CPU cores. Per design, two dice_gain
evaluations that share one baseline cache:

- ``oracle``: the synthetic set is a copy of the real training pairs;
- ``noise``: uniform-noise images with random disc masks (the negative
  control), evaluated with the ``extra_real`` control arm (the positive
  control: real pairs of the training-pool patients this regime does not use).

Designs: ``before`` is the split of the first release (8 test patients, no
training pool, so no extra_real arm); ``after`` is the quick profile now
(``train_pool: 8``, ``test_patients: rest``: 20 test patients on the phantom).
The noise evaluation is timed with the baselines already in the cache (the
oracle evaluation trains them), as the issue's 5-minute criterion asks.
Writes benchmarks/results/seg_controls.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seg_phantom_gain import noise_like  # noqa: E402

from toolkit.config import resolve  # noqa: E402
from toolkit.data.slices import SliceSet  # noqa: E402
from toolkit.experiment import build_evaluators, prepare_data  # noqa: E402
from toolkit.plugin import EvalContext  # noqa: E402
from toolkit.report import environment  # noqa: E402
from toolkit.seg.baseline import BaselineStore  # noqa: E402

DESIGNS = {
    "before": ["split.train_pool=null", "split.test_patients=8"],
    "after": [],
}


def evaluate(config, data, synthetic, cache: Path, run_dir: Path, controls: list[str]) -> tuple[dict, float]:
    device = torch.device("cpu")
    store = BaselineStore(data.train, data.val, data.fingerprint, config.seg, device, cache)
    ctx = EvalContext(train=data.train, val=data.val, test=data.test, synthetic=synthetic, device=device,
                      run_dir=run_dir, cache_dir=cache, data_fingerprint=data.fingerprint, baselines=store,
                      seg=config.seg, extra=data.extra)
    evaluator = build_evaluators(config.replace({"evaluators.dice_gain.controls": controls}), ["dice_gain"])
    start = time.perf_counter()
    metrics = evaluator["dice_gain"].evaluate(ctx)
    return metrics, time.perf_counter() - start


def row(design: str, name: str, m: dict, prefix: str, seconds: float | None, n_test: int) -> str:
    def f(key: str) -> str:
        return f"{m[f'{prefix}{key}']:+.3f}"

    wall = (f"{seconds:.0f} ({int(m['processes'])} x {int(m['threads'])} thr)" if seconds is not None
            else "(same evaluation)")
    components = " / ".join(f"{m[f'{prefix}_var_{c}'] ** 0.5:.3f}" for c in ("seed", "patient", "residual"))
    return (f"| {design} | {name} | {int(m['seeds'])} | {n_test} | {f('')} | [{f('_ci_low')}, {f('_ci_high')}] | "
            f"{m[f'{prefix}_ci_halfwidth']:.3f} | {m[f'{prefix}_mde80']:.3f} | {components} | "
            f"{'yes' if m[f'{prefix}_ci_low'] > 0 or m[f'{prefix}_ci_high'] < 0 else 'no'} | {wall} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", default="before,after")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "seg_controls.md"))
    parser.add_argument("--keep", default=None, help="keep the evaluations' folders (per_patient.csv) here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    load_before = os.getloadavg()
    rows = []
    for design in args.designs.split(","):
        config = resolve(profile="quick", overrides=["run.evaluators=[dice_gain]", *DESIGNS[design], *args.overrides])
        data = prepare_data(config)
        oracle = SliceSet(data.train.images, data.train.masks, data.train.cond, np.full(len(data.train), "synthetic"),
                          np.arange(len(data.train), dtype=np.int64))
        n_test = len(data.test.patients())
        with tempfile.TemporaryDirectory() as tmp:
            if args.keep:
                tmp = str(Path(args.keep) / design)
            cache = Path(tmp) / "cache"
            m, seconds = evaluate(config, data, oracle, cache, Path(tmp) / "oracle", [])
            rows.append(row(design, "oracle copies (baselines trained here)", m, "dice_gain", seconds, n_test))
            controls = ["extra_real"] if data.extra is not None else []
            m, seconds = evaluate(config, data, noise_like(data.train), cache, Path(tmp) / "noise", controls)
            rows.append(row(design, "noise (warm baseline cache)", m, "dice_gain", seconds, n_test))
            if controls:
                rows.append(row(design, f"positive: extra_real ({int(m['extra_real_patients'])} more patients)", m,
                                "extra_real_gain", None, n_test))
        print("\n".join(rows[-3:]), flush=True)
    env = environment()
    flags = open("/proc/cpuinfo").read()
    isa = ", ".join(f for f in ("avx2", "avx512_bf16", "amx_bf16") if f in flags)
    table = ["| design | synthetic set / arm | U-Net seeds | test patients | gain | 95% CI | CI half-width | "
             "MDE (80%) | sd seed / patient / residual | CI excludes 0 | wall s |",
             "|---|---|---:|---:|---:|---|---:|---:|---|---|---:|", *rows]
    command = "python benchmarks/seg_controls.py --designs " + args.designs + "".join(
        f" --set {o}" for o in args.overrides)
    text = (f"# dice_gain controls on the phantom: what the protocol can resolve\n\nCommand: `{command}` "
            f"({time.strftime('%Y-%m-%d')})\n\nMachine: {env['cpu']} ({isa}), torch {env['torch']}, "
            f"{env['torch_threads']} threads, load average {load_before[0]:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after. Quick profile: seg {config.seg.steps} steps, batch "
            f"{config.seg.batch_size}, base {config.seg.base_channels} channels, precision {config.seg.precision}; "
            f"dice_gain seeds {config['evaluators']['dice_gain'].get('seeds')}, 4 training patients, seg.processes "
            f"{config.seg.processes}, seg.threads {config.seg.threads}.\n\n"
            + "\n".join(table) + "\n")
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
