"""Training throughput and same-mask variety of ``pix2pix``.

Two modes:

    python benchmarks/gen_pix2pix.py --steps 30                 # throughput, quick config, phantom, 64 x 64
    python benchmarks/gen_pix2pix.py --steps 30 --set generator.seg_consistency_weight=1.0

trains pix2pix with its default config (configs/generators/pix2pix.yaml over
the quick profile) on the quick profile's training patients of the embedded
phantom and times every step after a warm-up: seconds per step, real pairs
per second and renderings per second (each real mask is rendered twice, plus
``source_fraction`` x batch source masks).

    python benchmarks/gen_pix2pix.py --from-run RUN_DIR [--png OUT.png]

loads a finished ``cli.py run`` of pix2pix (its config.yaml and last
checkpoint), renders ``--renderings`` images for each of ``--masks`` masks
drawn from its mask source, and prints the mean pairwise 1 - MS-SSIM between
renderings of one mask next to the same number between distinct real
training slices (the real set's own variety, for scale). ``--png`` writes a
mask -> renderings grid; it refuses for runs on real scans (never commit
images of real patients).
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
from torchvision.utils import make_grid, save_image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.config import resolve  # noqa: E402
from toolkit.data.masks import build_mask_source  # noqa: E402
from toolkit.experiment import build_generator, load_run_config, prepare_data  # noqa: E402
from toolkit.metrics.ssim import mean_pairwise_ms_ssim  # noqa: E402
from toolkit.plugin import TrainContext  # noqa: E402
from toolkit.train.checkpoint import load_checkpoint  # noqa: E402
from toolkit.train.loop import batch_indices, checkpoint_path  # noqa: E402
from toolkit.train.visuals import overlay  # noqa: E402


def machine() -> str:
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    have = [f for f in ("avx2", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"]
    return (f"{model}, {platform.machine()}, flags {'/'.join(have) or 'none'}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load {' '.join(load)}")


def set_up(config, device: str = "cpu"):
    prepared = prepare_data(config)
    masks_cfg = dict(config["masks"])
    source = masks_cfg.pop("source")
    gen = build_generator(config, torch.device(device))
    gen.setup(TrainContext(train=prepared.train, mask_source=build_mask_source(source, prepared.train, **masks_cfg)))
    return gen, prepared


def throughput(steps: int, overrides: list[str], warmup: int = 3) -> None:
    config = resolve(generator="pix2pix", profile="quick", overrides=["run.evaluators=[]", *overrides])
    torch.manual_seed(config["seed"])
    gen, prepared = set_up(config)
    train = prepared.train
    batch_size = int(config["train"]["batch_size"])
    per_step = 2 * batch_size + round(batch_size * gen.source_fraction)
    print(f"machine: {machine()}")
    print(f"pix2pix, {len(train)} training slices, batch {batch_size} (renderings per step {per_step}), "
          f"overrides {overrides or 'none'}")
    gen.train()
    times = []
    for step in range(steps):
        batch = train.to_batch(batch_indices(step, len(train), batch_size, config["seed"]).numpy())
        start = time.perf_counter()
        losses = gen.train_step(batch, step)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    s = statistics.median(times)
    print(f"median {s:.3f} s/step over {len(times)} steps: {batch_size / s:.1f} real pairs/s, "
          f"{per_step / s:.1f} renderings/s; 600 steps ~ {600 * s:.0f} s")
    print("last losses: " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}")


def from_run(run_dir: Path, n_masks: int, k: int, png: Path | None) -> None:
    config = load_run_config(run_dir)
    gen, prepared = set_up(config)
    gen.load_state_dict(load_checkpoint(checkpoint_path(run_dir), map_location="cpu")["generator"])
    gen.eval()
    generator = torch.Generator().manual_seed(2024)
    masks, cond = gen.mask_source.draw(n_masks, generator)
    with_gland = masks.flatten(1).any(1)
    masks, cond = masks[with_gland], cond[with_gland]
    images = gen.renderings(masks, cond, k, generator)
    same_mask = gen.same_mask_diversity(images)
    real_msssim, pairs = mean_pairwise_ms_ssim(prepared.train.images, pairs=2000, seed=0)
    print(f"run {run_dir} (masks.source {config['masks']['source']}, "
          f"seg_consistency_weight {config['generator'].get('seg_consistency_weight', 0.0)})")
    print(f"same-mask 1 - MS-SSIM: {same_mask:.4f} ({len(masks)} masks with gland x {k} renderings, "
          f"{len(masks) * k * (k - 1) // 2} pairs)")
    print(f"real training slices, distinct pairs 1 - MS-SSIM: {1 - real_msssim:.4f} ({pairs} pairs)")
    if png is not None:
        if config["data"]["path"] is not None:
            raise SystemExit("refusing to write a PNG of a run on real scans (never commit images of real patients)")
        rows = min(8, len(masks))
        tiles = [overlay(masks[:rows] * 2 - 1, masks[:rows])[:, None]]
        tiles.append(overlay(images[:rows].flatten(0, 1), masks[:rows].repeat_interleave(k, 0))
                     .view(rows, k, 3, *masks.shape[-2:]))
        save_image(make_grid(torch.cat(tiles, 1).flatten(0, 1), nrow=k + 1, padding=2, pad_value=1.0), png)
        print(f"wrote {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="training steps to time (first 3 are warm-up)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--from-run", type=Path, help="a finished pix2pix run directory")
    parser.add_argument("--masks", type=int, default=32, help="masks drawn for the same-mask diversity")
    parser.add_argument("--renderings", type=int, default=4, help="renderings per mask")
    parser.add_argument("--png", type=Path, help="write a mask -> renderings grid (phantom runs only)")
    args = parser.parse_args()
    if args.from_run is not None:
        from_run(args.from_run, args.masks, args.renderings, args.png)
    else:
        throughput(args.steps, args.overrides)


if __name__ == "__main__":
    main()
