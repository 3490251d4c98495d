"""Segmenter training speed: the default U-Net's layouts, and one evaluation's 9 U-Nets one by one vs batched.

    python benchmarks/seg_speed.py [--threads N] [--steps N] [--eval-steps N] [--monai-models N]

Part 1 (``--steps``): the default U-Net (base 16, depth 4) at 64 x 64, batch 32: fp32, channels_last, bf16.

Part 2 (``--eval-steps``, 0 skips it): the quick profile's segmenter (``seg`` section of
configs/profiles/quick.yaml: batch 16, base 8, depth 4, precision auto, channels_last, val every 50)
on the phantom's quick split (4 training patients), for the 9 U-Nets of one dice_gain evaluation
(3 arms x 3 seeds: baseline = real, augmented = real + noise pairs, tstr = noise pairs):

- today: ``train_unet`` for each of the 9 jobs, one after another, at ``--threads`` threads (what
  dice_gain did before ``seg.processes``);
- dice_gain now: ``toolkit.seg.batched.train_unets(processes=--threads, threads=1)``: one by one in
  ``--threads`` spawned processes of one thread each (``seg.processes: auto`` on an idle machine; each
  U-Net bit-for-bit ``train_unet``'s at 1 thread), spawning included in its wall time;
- MONAI ``BasicUNet`` (features 16-16-32-64-128-16: about the base-8 U-Net's parameters; its other
  defaults: instance norm, LeakyReLU, deconv) in the same training loop, one by one, on the first
  ``--monai-models`` jobs (throughput per model does not depend on how many run one after another);
  skipped when monai is not installed (a benchmark-only dependency);
- on a CPU with native bf16: the first two paths again in fp32 (the bf16 vs fp32 comparison);
- with ``--grouped``: one grouped-convolution network of the 9 U-Nets in this process, and one per
  process (measured slower per model on CPUs, so off by default).

Throughput = U-Net training steps per second per evaluation = (models x steps) / wall seconds,
validation included. Each path's models are scored on the test patients, so the table also shows
that batched training gives the same Dice as one by one (within seed noise).

Prints tables and writes benchmarks/results/seg_speed.md. Other processes
sharing the CPU slow every row; the machine load (uptime) is recorded with
the numbers. bf16 rows are only meaningful where the CPU runs bf16 natively
(AVX512-BF16 / AMX); elsewhere autocast emulates it and is slower, which is
why the segmenter's ``precision: auto`` keeps fp32 there.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.config import resolve  # noqa: E402
from toolkit.data.augment import augment_batch  # noqa: E402
from toolkit.experiment import prepare_data  # noqa: E402
from toolkit.nn.unet import UNet  # noqa: E402
from toolkit.runtime import autocast, cpu_supports_bf16, reproducible, resolve_precision  # noqa: E402
from toolkit.seg.batched import Job, train_unets  # noqa: E402
from toolkit.seg.predict import score_patients, volume_dice  # noqa: E402
from toolkit.seg.train import Pool, TrainResult, _draw, dice_bce_loss, train_unet  # noqa: E402

VARIANTS = {
    "fp32 NCHW": (False, None),
    "fp32 channels_last": (True, None),
    "bf16 autocast + channels_last": (True, torch.bfloat16),
}


def images_per_second(channels_last: bool, dtype: torch.dtype | None, steps: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    model = UNet()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(32, 1, 64, 64)
    y = (torch.rand(32, 1, 64, 64) > 0.8).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    device = torch.device("cpu")
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        with autocast(device, dtype):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 32 * steps / (time.perf_counter() - start)


# Part 2: one evaluation's 9 U-Nets ----------------------------------------------------------


def noise_pairs(n: int, size: int, seed: int = 0):
    """Uniform noise images with random disc masks (the negative control of benchmarks/seg_phantom_gain.py)."""
    from toolkit.data.slices import SliceSet

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.stack([((yy - rng.uniform(0.2, 0.8) * size) ** 2 + (xx - rng.uniform(0.2, 0.8) * size) ** 2
                       <= (rng.uniform(0.05, 0.15) * size) ** 2) for _ in range(n)]).astype(np.uint8)
    return SliceSet(rng.uniform(-1, 1, (n, size, size)).astype(np.float32), masks, np.zeros((n, 2), np.float32),
                    np.full(n, "synthetic"), np.arange(n, dtype=np.int64))


def monai_unet():
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(16, 16, 32, 64, 128, 16))


def train_monai(pools: list[Pool], val, config, seed: int) -> TrainResult:
    """``train_unet``'s loop (same draws, augmentation, loss, Adam, selection) with MONAI's BasicUNet."""
    device = torch.device("cpu")
    amp_dtype = resolve_precision(config.precision, device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = monai_unet()
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = time.perf_counter()
    best_state, best_step, best_dice = None, 0, -1.0
    for step in range(1, config.steps + 1):
        image, mask = _draw(pools, config.batch_size, generator)
        if config.augment:
            image, mask = augment_batch(image, mask, generator, elastic=config.elastic)
        if config.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        model.train()
        with autocast(device, amp_dtype):
            logits = model(image)
        loss = dice_bce_loss(logits, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % config.val_every == 0 or step == config.steps:
            val_dice = volume_dice(model, val, amp_dtype=amp_dtype, channels_last=config.channels_last)
            if val_dice > best_dice:
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
                best_step, best_dice = step, val_dice
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_step, best_dice, time.perf_counter() - start, [])


def evaluation_rows(steps: int, threads: int, monai_models: int, grouped: bool = False) -> tuple[str, list[tuple]]:
    """Train the 9 U-Nets of one evaluation each way; (description, rows of name, models, wall s, Dice...)."""
    config = resolve(profile="quick", overrides=["split.n_train_patients=4"])
    seg = dataclasses.replace(config.seg, steps=steps)
    data = prepare_data(config)
    noise = noise_pairs(len(data.train), data.train.image_size)
    arms = {"baseline": [Pool.of(data.train)],
            "augmented": [Pool.of(data.train), Pool.of(noise, name="synthetic")],
            "tstr": [Pool.of(noise, name="synthetic")]}
    jobs = [(arm, Job(pools, seed)) for seed in range(3) for arm, pools in arms.items()]
    amp = resolve_precision(seg.precision, "cpu")

    def dice_by_arm(results: list[TrainResult], names: list[str]) -> dict[str, float]:
        out: dict[str, list[float]] = {}
        for name, result in zip(names, results):
            scores = score_patients(result.model, data.test, amp_dtype=amp, channels_last=seg.channels_last)
            out.setdefault(name, []).append(float(np.mean([s.dice for s in scores])))
        return {k: float(np.mean(v)) for k, v in out.items()}

    rows = []
    names = [arm for arm, _ in jobs]
    fp32 = dataclasses.replace(seg, precision="fp32")
    precision = "bf16" if amp is torch.bfloat16 else "fp32"

    def timed(name: str, n: int, train) -> None:
        start = time.perf_counter()
        results = train()
        rows.append((name, n, time.perf_counter() - start, dice_by_arm(results, names[:n]),
                     [r.best_val_dice for r in results]))
        print(f"{name}: {rows[-1][2]:.1f} s", flush=True)

    all_jobs = [job for _, job in jobs]
    with reproducible(threads):
        # The reference first: what dice_gain did before seg.processes (train_unet one by one, all threads).
        timed(f"today: train_unet one by one, 1 process x {threads} threads, {precision}", len(jobs),
              lambda: [train_unet(job.pools, data.val, seg, job.seed) for job in all_jobs])
        if threads > 1:
            # What dice_gain does now (seg.processes auto on an idle machine): one 1-thread process per core.
            timed(f"dice_gain now: train_unets(processes={threads}, threads=1), {precision}", len(jobs),
                  lambda: train_unets(all_jobs, data.val, seg, processes=threads, threads=1))
        try:
            import monai  # noqa: F401
        except ImportError:
            print("monai is not installed: skipping the BasicUNet row (pip install monai)")
        else:
            n = min(monai_models, len(jobs))
            timed(f"MONAI BasicUNet one by one (first {n} jobs), 1 process x {threads} threads, {precision}", n,
                  lambda: [train_monai(job.pools, data.val, seg, job.seed) for job in all_jobs[:n]])
        if amp is not None:  # the same two paths without bf16 autocast
            timed(f"today: train_unet one by one, 1 process x {threads} threads, fp32", len(jobs),
                  lambda: [train_unet(job.pools, data.val, fp32, job.seed) for job in all_jobs])
            if threads > 1:
                timed(f"train_unets(processes={threads}, threads=1), fp32", len(jobs),
                      lambda: train_unets(all_jobs, data.val, fp32, processes=threads, threads=1))
        if grouped:  # measured slower per model on CPUs (see the notes); off unless asked for
            timed(f"train_unets(grouped=True): one grouped network, 1 process x {threads} threads, {precision}",
                  len(jobs), lambda: train_unets(all_jobs, data.val, seg, grouped=True))
            if threads > 1:
                timed(f"train_unets(processes={threads}, grouped=True): {threads} grouped networks x 1 thread",
                      len(jobs), lambda: train_unets(all_jobs, data.val, seg, processes=threads, grouped=True))
    params = {"U-Net base 8": sum(p.numel() for p in UNet(1, 1, seg.base_channels, seg.depth, seg.norm).parameters())}
    try:
        params["BasicUNet"] = sum(p.numel() for p in monai_unet().parameters())
    except ImportError:
        pass
    described = (f"Phantom quick split: {len(data.train)} training slices of {len(data.train.patients())} patients, "
                 f"{len(data.val.patients())} val and {len(data.test.patients())} test patients. Segmenter: "
                 f"{seg} (precision -> {'bf16' if amp is torch.bfloat16 else 'fp32'}). Parameters: "
                 + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    return described, rows


def evaluation_table(rows: list[tuple], steps: int) -> str:
    base = rows[0][1] * steps / rows[0][2]
    monai = next((r[1] * steps / r[2] for r in rows if r[0].startswith("MONAI")), None)
    table = ["| path | U-Nets | wall s | steps/s per evaluation | vs today | vs BasicUNet | test Dice baseline "
             "/ augmented / tstr (mean of seeds) | best val Dice per job |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for name, n, wall, dices, vals in rows:
        rate = n * steps / wall
        table.append(f"| {name} | {n} | {wall:.1f} | {rate:.1f} | {rate / base:.2f}x | "
                     f"{f'{rate / monai:.2f}x' if monai else 'n/a'} | "
                     + " / ".join(f"{dices[a]:.3f}" for a in ("baseline", "augmented", "tstr") if a in dices)
                     + " | " + " ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(table)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return f"{model}, {os.cpu_count()} cores, flags " + " ".join(f"{f}:{'yes' if f in flags else 'no'}" for f in wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eval-steps", type=int, default=300, help="steps per U-Net in part 2 (0: skip it)")
    parser.add_argument("--monai-models", type=int, default=3, help="BasicUNet jobs timed in part 2")
    parser.add_argument("--grouped", action="store_true", help="part 2: also time the grouped-convolution paths")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = [(name, images_per_second(cl, dt, args.steps)) for name, (cl, dt) in VARIANTS.items()] if args.steps else []
    load_mid = os.getloadavg()
    described, eval_rows = evaluation_rows(args.eval_steps, args.threads, args.monai_models, args.grouped) if args.eval_steps \
        else ("", [])
    load_after = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    header = (
        f"CPU: {machine()}, torch {torch.__version__}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_supports_bf16()} "
        f"(precision auto -> {resolve_precision('auto', 'cpu') or 'fp32'}), threads {args.threads}, "
        f"{args.steps} timed steps (part 1), {args.eval_steps} steps per U-Net (part 2)\n\n"
        f"Load average (1 min) before {load_before[0]:.2f}, between the parts {load_mid[0]:.2f}, "
        f"after {load_after[0]:.2f} (`{uptime}`)"
    )
    text = ""
    if rows:
        base = rows[0][1]
        table = ["| variant | img/s | vs fp32 NCHW |", "|---|---:|---:|"]
        table += [f"| {name} | {ips:.1f} | {ips / base:.2f}x |" for name, ips in rows]
        text += "## Part 1: default U-Net (base 16, depth 4), 64 x 64, batch 32, Adam step\n\n" + "\n".join(table)
    if eval_rows:
        text += ("\n\n## Part 2: one evaluation's 9 U-Nets (quick profile segmenter)\n\n" + described + "\n\n"
                 + evaluation_table(eval_rows, args.eval_steps))
    print(header + "\n\n" + text)
    out = Path(__file__).resolve().parent / "results" / "seg_speed.md"
    out.write_text(
        "# Segmenter training speed\n\n"
        f"Command: `python benchmarks/seg_speed.py --threads {args.threads} --steps {args.steps} "
        f"--eval-steps {args.eval_steps} --monai-models {args.monai_models}{' --grouped' if args.grouped else ''}`\n\n"
        f"{header}\n\n{text}\n"
    )


if __name__ == "__main__":
    main()
