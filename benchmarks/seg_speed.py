"""Training speed of the default U-Net (base 16, depth 4) at 64 x 64, batch 32: fp32, channels_last, bf16.

    python benchmarks/seg_speed.py [--threads N] [--steps N]

Prints a table and writes benchmarks/results/seg_speed.md. Other processes
sharing the CPU slow every row; the machine load (uptime) is recorded with
the numbers. bf16 rows are only meaningful where the CPU runs bf16 natively
(AVX512-BF16 / AMX); elsewhere autocast emulates it and is slower, which is
why the segmenter's ``precision: auto`` keeps fp32 there.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.nn.unet import UNet  # noqa: E402
from toolkit.runtime import autocast, cpu_supports_bf16, resolve_precision  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = [(name, images_per_second(cl, dt, args.steps)) for name, (cl, dt) in VARIANTS.items()]
    load_after = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    header = (
        f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_supports_bf16()} "
        f"(precision auto -> {resolve_precision('auto', 'cpu') or 'fp32'}), threads {args.threads}, "
        f"{args.steps} timed steps\n\nLoad average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"(`{uptime}`)"
    )
    base = rows[0][1]
    table = ["| variant | img/s | vs fp32 NCHW |", "|---|---:|---:|"]
    table += [f"| {name} | {ips:.1f} | {ips / base:.2f}x |" for name, ips in rows]
    text = "\n".join(table)
    print(header + "\n\n" + text)
    out = Path(__file__).resolve().parent / "results" / "seg_speed.md"
    out.write_text(
        "# Segmenter training speed (default U-Net, 64 x 64, batch 32, Adam step)\n\n"
        f"Command: `python benchmarks/seg_speed.py --threads {args.threads} --steps {args.steps}`\n\n"
        f"{header}\n\n{text}\n"
    )


if __name__ == "__main__":
    main()
