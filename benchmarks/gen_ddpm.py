"""Training throughput and sampling time per 100 slices of ``ddpm`` on the phantom.

Trains ``ddpm`` with its default config (configs/generators/ddpm.yaml merged
over the quick profile, plus any ``--set`` overrides) on the quick profile's
training patients of the embedded phantom, times every training step after a
warm-up, then times sampling 100 slices at several step counts with the EMA
weights, and saves a grid of real pairs next to samples at each step count.

    python benchmarks/gen_ddpm.py                                # quick-profile steps and batch
    python benchmarks/gen_ddpm.py --steps 30 --set generator.base_channels=16 --no-png
    python benchmarks/gen_ddpm.py --steps 30 --sample-steps 5,25 --set generator.mode=mask_conditioned

Prints one JSON line with the figures (and writes it to ``--json`` if given);
other processes on the machine slow it down, so the load average before and
after is recorded with the numbers. The CPU and its bf16/AMX flags are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.config import plugin_kwargs, resolve  # noqa: E402
from toolkit.data import load_dataset, select_slices, split_patients  # noqa: E402
from toolkit.data.masks import build_mask_source  # noqa: E402
from toolkit.plugin import TrainContext  # noqa: E402
from toolkit.registry import GENERATORS  # noqa: E402
from toolkit.train.loop import batch_indices  # noqa: E402
from toolkit.train.visuals import pair_grid, side_by_side  # noqa: E402
from toolkit.types import DataSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def cpu_info() -> dict:
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--sample-steps", default="5,10,25,50", help="comma-separated step counts to time")
    parser.add_argument("--n-sample", type=int, default=100, help="slices sampled per timing")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--png", default=str(RESULTS / "gen_ddpm_phantom.png"), help="sample grid path")
    parser.add_argument("--no-png", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    load_before = os.getloadavg()
    cfg = resolve(generator="ddpm", profile="quick", overrides=["run.evaluators=[]", *args.overrides])
    steps = args.steps if args.steps is not None else int(cfg["train"]["steps"])
    batch_size = args.batch_size if args.batch_size is not None else int(cfg["train"]["batch_size"])
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    torch.manual_seed(cfg["seed"])
    slices, _ = load_dataset(cfg.data)
    split = split_patients(slices.patients(), cfg.split)
    train = select_slices(slices.of_patients(split["train"]), cfg.data, cfg.split.seed)
    cls = GENERATORS.get("ddpm")
    gen = cls(DataSpec(image_size=train.image_size), "cpu", **plugin_kwargs(cls, cfg["generator"]))
    gen.amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    masks_cfg = dict(cfg["masks"])
    source = masks_cfg.pop("source")
    gen.setup(TrainContext(train=train, mask_source=build_mask_source(source, train, **masks_cfg)
                           if gen.needs_masks else None))
    params = sum(p.numel() for p in gen.net.parameters())

    # Train: time each step after the warm-up.
    gen.train()
    times, last = [], {}
    t_train = time.perf_counter()
    for step in range(steps):
        batch = train.to_batch(batch_indices(step, len(train), batch_size, cfg["seed"]).numpy())
        start = time.perf_counter()
        last = gen.train_step(batch, step)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()), flush=True)
    train_seconds = time.perf_counter() - t_train
    s_per_step = statistics.median(times) if times else float("nan")

    # Sample: seconds per n slices at each step count, from the same noise (and masks).
    gen.eval()
    real = train.to_batch(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:32].numpy())
    sampling, grids = {}, []
    for k in [int(v) for v in args.sample_steps.split(",")]:
        with torch.no_grad():
            out = gen.sample(args.n_sample, generator=torch.Generator().manual_seed(0), steps=k)
        sampling[k] = {"seconds_per_100": round(gen.last_sampling_seconds_per_100, 2),
                       "mask_area": round(out.mask.mean().item(), 4),
                       "with_mask": round((out.mask.sum(dim=(1, 2, 3)) > 0).float().mean().item(), 3)}
        grids.append(pair_grid(out.image[:32], out.mask[:32]))
        print(f"  sample {k} steps: {sampling[k]}", flush=True)
    if not args.no_png:
        grid = pair_grid(real.image, real.mask)
        for g in grids:
            grid = side_by_side(grid, g)
        save_image(grid, args.png)

    figures = {
        **cpu_info(), "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "command": " ".join(["python", *sys.argv]), "generator": cfg["generator"], "params": params,
        "train_slices": len(train), "steps": steps, "batch_size": batch_size, "amp": args.amp,
        "s_per_step": round(s_per_step, 4), "img_per_s": round(batch_size / s_per_step, 1),
        "train_seconds": round(train_seconds, 1), "losses": last, "n_sample": args.n_sample,
        "sampling": sampling, "real_mask_area": round(real.mask.mean().item(), 4),
        "real_with_mask": round((real.mask.sum(dim=(1, 2, 3)) > 0).float().mean().item(), 3),
    }
    line = json.dumps(figures, default=str)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")


if __name__ == "__main__":
    main()
