"""Seconds per step and sample quality of ``vae`` and ``vaegan`` on the phantom.

Trains each generator with its default config (configs/generators/<name>.yaml
merged over the quick profile) on the quick profile's training patients of
the embedded phantom, times every step after a warm-up, and saves a grid of
real pairs next to prior samples, with the mask outlined, for each model.

    python benchmarks/gen_vae_vaegan.py                      # 600 steps each, batch 32, 64 x 64
    python benchmarks/gen_vae_vaegan.py --steps 20 --generators vaegan --amp bf16

    python benchmarks/gen_vae_vaegan.py --docs-png runs/VAE_RUN runs/VAEGAN_RUN

The last form only composes two ``cli.py run`` outputs (their
``synthetic/grid.png``) side by side into docs/samples_vae_vaegan.png.

Prints a table and writes benchmarks/results/gen_vae_vaegan.md plus
benchmarks/results/gen_<name>_<steps>.png. Other processes on the machine
slow it down: the load average before and after is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, read_image
from torchvision.utils import save_image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.config import plugin_kwargs, resolve  # noqa: E402
from toolkit.data import load_dataset, select_slices, split_patients  # noqa: E402
from toolkit.registry import GENERATORS  # noqa: E402
from toolkit.train.loop import batch_indices  # noqa: E402
from toolkit.train.visuals import pair_grid, side_by_side  # noqa: E402
from toolkit.types import DataSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def train_one(name: str, steps: int, batch_size: int, amp: str, overrides: list[str], tag: str = "",
              out_dir: Path = RESULTS, warmup: int = 3) -> dict:
    # No evaluators: this measures the generator alone.
    cfg = resolve(generator=name, profile="quick", overrides=["run.evaluators=[]", *overrides])
    torch.manual_seed(cfg["seed"])
    slices, _ = load_dataset(cfg.data)
    split = split_patients(slices.patients(), cfg.split)
    train = select_slices(slices.of_patients(split["train"]), cfg.data, cfg.split.seed)
    cls = GENERATORS.get(name)
    gen = cls(DataSpec(image_size=train.image_size), "cpu", **plugin_kwargs(cls, cfg["generator"]))
    gen.amp_dtype = torch.bfloat16 if amp == "bf16" else None
    gen.train()
    times, last = [], {}
    for step in range(steps):
        batch = train.to_batch(batch_indices(step, len(train), batch_size, cfg["seed"]).numpy())
        start = time.perf_counter()
        last = gen.train_step(batch, step)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        if step % 50 == 0 or step == steps - 1:
            print(f"  {name} step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items()), flush=True)
    gen.eval()
    with torch.no_grad():
        fake = gen.sample(32, generator=torch.Generator().manual_seed(0))
    real = train.to_batch(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:32].numpy())
    png = out_dir / f"gen_{name}_{steps}{tag}.png"
    save_image(side_by_side(pair_grid(real.image, real.mask), pair_grid(fake.image, fake.mask)), png)
    return {"name": name, "train_slices": len(train), "s_per_step": statistics.median(times) if times else float("nan"),
            "steps": steps, "losses": last, "png": png.relative_to(ROOT) if png.is_relative_to(ROOT) else png,
            "mask_area": fake.mask.mean().item(), "real_mask_area": real.mask.mean().item(),
            "with_mask": (fake.mask.sum(dim=(1, 2, 3)) > 0).float().mean().item(),
            "real_with_mask": (real.mask.sum(dim=(1, 2, 3)) > 0).float().mean().item()}


def compose_docs_png(vae_run: Path, vaegan_run: Path, out: Path = ROOT / "docs" / "samples_vae_vaegan.png") -> Path:
    """Put the synthetic grids of a ``vae`` run (left) and a ``vaegan`` run (right) side by side."""
    grids = []
    for run in (vae_run, vaegan_run):
        png = run / "synthetic" / "grid.png"
        if not png.is_file():
            raise FileNotFoundError(f"{png} not found: pass the run folders of two finished `cli.py run` commands")
        grids.append(read_image(str(png), ImageReadMode.RGB).float() / 255.0)
    save_image(side_by_side(*grids, gap=16), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generators", nargs="+", default=["vae", "vaegan"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as in cli.py (e.g. generator.prior=standard); repeatable")
    parser.add_argument("--out-dir", type=Path, default=RESULTS,
                        help="folder of the grids; results are appended to the .md only for the default")
    parser.add_argument("--docs-png", nargs=2, type=Path, metavar=("VAE_RUN", "VAEGAN_RUN"),
                        help="only compose two run folders' synthetic grids into docs/samples_vae_vaegan.png")
    parser.add_argument("--tag", default="", help="suffix of the grid file names, to keep variants apart")
    args = parser.parse_args()
    if args.docs_png:
        print(compose_docs_png(*args.docs_png))
        return
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    rows = [train_one(name, args.steps, args.batch_size, args.amp, args.set, args.tag, args.out_dir) for name in args.generators]
    load_after = os.getloadavg()

    command = "python benchmarks/gen_vae_vaegan.py " + " ".join(sys.argv[1:])
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')}: `{command.strip()}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} threads, amp {args.amp}; load average (1 min) "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (other agents share these cores).",
        "",
        "| generator | train slices | batch | steps | median s/step | est. s for 600 steps | "
        "sample mask area | real mask area | samples with a mask | real with a mask | final losses | "
        "grid (real left, samples right) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        losses = ", ".join(f"{k} {v:.3f}" for k, v in r["losses"].items())
        lines.append(f"| {r['name']} | {r['train_slices']} | {args.batch_size} | {r['steps']} | "
                     f"{r['s_per_step']:.3f} | {600 * r['s_per_step']:.0f} | {r['mask_area']:.3f} | "
                     f"{r['real_mask_area']:.3f} | {r['with_mask']:.2f} | {r['real_with_mask']:.2f} | {losses} | {r['png']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_dir.resolve() != RESULTS.resolve():
        return
    out = RESULTS / "gen_vae_vaegan.md"
    previous = out.read_text() if out.is_file() else "# vae / vaegan: seconds per step and samples\n\n"
    out.write_text(previous + text + "\n")


if __name__ == "__main__":
    main()
