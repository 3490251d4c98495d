"""Every generator's quick-profile training cost, side by side in one process: is the budget equal?

    python benchmarks/gen_budget.py                              # all registered generators, fp32 and bf16
    python benchmarks/gen_budget.py --generators pix2pix --set generator.base_channels=8 --precisions fp32

For each generator: its quick config (configs/generators/<name>.yaml over the
quick profile, plus ``--set``), the phantom's quick training patients, the
way ``cli.py run`` builds it (``build_generator``, ``setup`` with the core's
mask source; no segmenter, so seg-consistency terms are not timed), and the
loop's precision and memory layout (``--precisions fp32,bf16``: bf16 is
autocast + channels_last, as ``train.precision: bf16`` with
``train.channels_last: on``). Generators change what a step does over the run
(vaegan's VAE-only phase, stylegan_lite's lazy R1 every 16 steps), so steps are
timed in ``--windows`` windows spread over the profile's step range, each
window ``--window`` consecutive steps (the first ``--warmup`` of the first
window untimed). The estimate is the profile's steps x the mean timed step.

Prints one table; ``--out`` appends it (with CPU, flags, threads, load and the
command) to a markdown file. The ratio column is against the first generator
listed (vaegan by default: the issues' budget). Heavy: run it alone
(``flock /tmp/ganseg-cpu.lock``), other processes distort every row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.config import resolve  # noqa: E402
from toolkit.data.masks import build_mask_source  # noqa: E402
from toolkit.experiment import build_generator, prepare_data  # noqa: E402
from toolkit.plugin import TrainContext  # noqa: E402
from toolkit.registry import GENERATORS  # noqa: E402
from toolkit.report import environment  # noqa: E402
from toolkit.runtime import cpu_supports_bf16, set_threads  # noqa: E402
from toolkit.train.loop import batch_indices  # noqa: E402
from toolkit.types import Batch  # noqa: E402

DEFAULT = "vaegan,vae,pix2pix,stylegan_lite,ddpm,deformed_real"


def cpu_line() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{environment()['cpu']}, flags {' '.join(wanted)}, native bf16 {cpu_supports_bf16()}"


def time_generator(name: str, precision: str, args) -> dict:
    config = resolve(generator=name, profile="quick", overrides=["run.evaluators=[]", *args.overrides])
    prepared = prepare_data(config)
    gen = build_generator(config, torch.device("cpu"))
    source = None
    if gen.needs_masks:
        source = build_mask_source(config.masks.source, prepared.train, **config.masks.deformation())
    gen.setup(TrainContext(train=prepared.train, mask_source=source, segmenter=None))
    if precision == "bf16":
        gen.amp_dtype = torch.bfloat16
        for module in gen.modules().values():
            module.to(memory_format=torch.channels_last)
    steps, batch_size = config.train.steps, config.train.batch_size
    data = prepared.train.to_batch()
    idx_len = len(prepared.train)
    if precision == "bf16":
        data.image = data.image.contiguous(memory_format=torch.channels_last)
        data.mask = data.mask.contiguous(memory_format=torch.channels_last)
    gen.train()
    starts = [round(i * (steps - args.window) / max(1, args.windows - 1)) for i in range(args.windows)]
    times = []
    for w, start in enumerate(starts):
        for step in range(start, start + args.window):
            idx = batch_indices(step, idx_len, batch_size, config.seed)
            batch = Batch(data.image[idx], data.mask[idx], data.cond[idx])
            t = time.perf_counter()
            gen.train_step(batch, step)
            if w > 0 or step - start >= args.warmup:
                times.append(time.perf_counter() - t)
    mean = statistics.fmean(times)
    return {"generator": name, "precision": precision, "steps": steps, "batch": batch_size,
            "s_per_step": mean, "median": statistics.median(times), "img_s": batch_size / mean,
            "est_s": steps * mean, "timed": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generators", default=DEFAULT)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--window", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the idle cores)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", default=None, help="append the table to this markdown file")
    args = parser.parse_args()

    threads = set_threads(args.threads)
    load_before = os.getloadavg()
    names = [g for g in args.generators.split(",") if g]
    for g in names:
        GENERATORS.get(g)
    rows = []
    for precision in args.precisions.split(","):
        for g in names:
            row = time_generator(g, precision, args)
            rows.append(row)
            print(f"{g:14s} {precision:5s} {row['s_per_step']:.3f} s/step  {row['img_s']:6.1f} img/s  "
                  f"est {row['est_s']:.0f} s for {row['steps']} steps", flush=True)
    ref = {r["precision"]: r["est_s"] for r in rows if r["generator"] == names[0]}
    fp32 = {r["generator"]: r["est_s"] for r in rows if r["precision"] == "fp32"}
    lines = [f"Command: `python {' '.join(sys.argv)}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"CPU: {cpu_line()}; torch {torch.__version__}, {threads} threads; load average "
             f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after. Steps timed: {args.windows} windows "
             f"of {args.window} over the profile's step range.", "",
             f"| generator | precision | batch | s/step (mean) | median | img/s | est. s for the steps | "
             f"vs {names[0]} | bf16 vs fp32 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speed = f"{fp32[r['generator']] / r['est_s']:.2f}x" if r["generator"] in fp32 else "-"
        lines.append(f"| {r['generator']} | {r['precision']} | {r['batch']} | {r['s_per_step']:.3f} | "
                     f"{r['median']:.3f} | {r['img_s']:.1f} | {r['est_s']:.0f} ({r['steps']}) | "
                     f"{r['est_s'] / ref[r['precision']]:.2f}x | {speed} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + table)


if __name__ == "__main__":
    main()
