"""Training throughput and condition fidelity of ``stylegan_lite`` on the phantom.

Trains the generator with its default config (configs/generators/stylegan_lite.yaml
over the quick profile) on the quick profile's training patients of the
embedded phantom, times every step after a warm-up (img/s at 64 x 64), and then
measures whether the area condition is honoured: masks sampled for the 10%
area quantile of the training gland slices against the 90% quantile (mean
area with a bootstrap 95% CI), and the correlation between asked and sampled
area over conditions drawn from the training slices. Saves a grid by
condition (rows: area small -> large; columns share latents).

    python benchmarks/gen_stylegan_lite.py                    # 600 steps, batch 32
    python benchmarks/gen_stylegan_lite.py --steps 20         # throughput only, roughly
    python benchmarks/gen_stylegan_lite.py --run RUN_DIR      # condition fidelity of a finished cli.py run
    python benchmarks/gen_stylegan_lite.py --run RUN_DIR --no-grid   # the same for a run on real scans

Prints a table and appends it to benchmarks/results/gen_stylegan_lite.md (grids go
to benchmarks/results/gen_stylegan_lite_*.png; phantom only, never real scans).
Other processes slow it down: the load average before and after is recorded.
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
import yaml
from torchvision.utils import save_image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.config import plugin_kwargs, resolve  # noqa: E402
from toolkit.data import load_dataset, select_slices, split_patients  # noqa: E402
from toolkit.plugin import TrainContext  # noqa: E402
from toolkit.registry import GENERATORS  # noqa: E402
from toolkit.train.checkpoint import load_checkpoint  # noqa: E402
from toolkit.train.loop import batch_indices  # noqa: E402
from toolkit.train.visuals import pair_grid  # noqa: E402
from toolkit.types import DataSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
NAME = "stylegan_lite"


def bootstrap_ci(x: torch.Tensor, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(x), (n_boot, len(x)), generator=g)
    means = x[idx].mean(dim=1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def condition_fidelity(gen, tag: str, out_dir: Path, n: int = 128, grid: bool = True) -> dict:
    """Mask area for small vs large area conditions, asked-vs-sampled correlation, a grid by area."""
    gen.eval()
    bank = gen.cond_bank
    gland = bank[bank[:, 1] > 0]
    q10, q90 = gland[:, 1].quantile(0.1), gland[:, 1].quantile(0.9)
    out = {"area_q10": float(q10), "area_q90": float(q90)}
    with torch.no_grad():
        for name, q in (("small", q10), ("large", q90)):
            # The real slices nearest to the quantile, with their own positions (realistic conditions).
            near = gland[(gland[:, 1] - q).abs().argsort()[:8]]
            cond = near[torch.arange(n) % len(near)]
            area = gen.sample(n, cond=cond, generator=torch.Generator().manual_seed(1)).mask.mean(dim=(1, 2, 3))
            out[f"{name}_area"] = float(area.mean())
            out[f"{name}_ci"] = bootstrap_ci(area)
            out[f"{name}_empty"] = float((area == 0).float().mean())
        drawn = gen.sample(256, generator=torch.Generator().manual_seed(2))
        asked, got = drawn.cond[:, 1], drawn.mask.mean(dim=(1, 2, 3))
        out["pearson"] = float(torch.corrcoef(torch.stack([asked, got]))[0, 1])
        out["sampled_area"], out["train_area"] = float(got.mean()), float(bank[:, 1].mean())
        rows = gen.condition_rows(1, rows=6)
        by_area = [gen.sample(8, cond=r.expand(8, -1), generator=torch.Generator().manual_seed(3)) for r in rows]
    if not grid:  # real scans: no images of (synthetic look-alikes of) real slices in the repository
        out["png"] = "(not saved)"
        return out
    png = out_dir / f"gen_{NAME}_by_area_{tag}.png"
    save_image(pair_grid(torch.cat([o.image for o in by_area]), torch.cat([o.mask for o in by_area]), nrow=8), png)
    out["png"] = png.relative_to(ROOT) if png.is_relative_to(ROOT) else png
    return out


def train(steps: int, batch_size: int, overrides: list[str], amp: str = "off", warmup: int = 3):
    cfg = resolve(generator=NAME, profile="quick", overrides=["run.evaluators=[]", *overrides])
    torch.manual_seed(cfg["seed"])
    slices, _ = load_dataset(cfg.data)
    split = split_patients(slices.patients(), cfg.split)
    train_set = select_slices(slices.of_patients(split["train"]), cfg.data, cfg.split.seed)
    cls = GENERATORS.get(NAME)
    gen = cls(DataSpec(image_size=train_set.image_size), "cpu", **plugin_kwargs(cls, cfg["generator"]))
    gen.setup(TrainContext(train=train_set))
    gen.amp_dtype = torch.bfloat16 if amp == "bf16" else None
    gen.train()
    times, last = [], {}
    for step in range(steps):
        batch = train_set.to_batch(batch_indices(step, len(train_set), batch_size, cfg["seed"]).numpy())
        start = time.perf_counter()
        last = gen.train_step(batch, step)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items()), flush=True)
    return gen, len(train_set), times, last


def from_run(run_dir: Path):
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cls = GENERATORS.get(cfg["run"]["generator"])
    gen = cls(DataSpec(image_size=cfg["data"]["image_size"]), "cpu", **plugin_kwargs(cls, cfg["generator"]))
    gen.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["generator"])
    return gen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast of the forward passes")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as in cli.py (e.g. generator.augment=diffaug); repeatable")
    parser.add_argument("--run", type=Path, help="only measure condition fidelity of this finished run (phantom runs)")
    parser.add_argument("--no-grid", action="store_true", help="save no sample grid (use for real scans)")
    parser.add_argument("--tag", default="", help="suffix of the grid file name")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results .md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    command = "python benchmarks/gen_stylegan_lite.py " + " ".join(sys.argv[1:])
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')}: `{command.strip()}`", ""]
    if args.run:
        gen = from_run(args.run)
        tag = args.tag or args.run.name
    else:
        gen, n_slices, times, last = train(args.steps, args.batch_size, args.set, args.amp)
        tag = args.tag or f"{args.steps}"
        s = statistics.median(times) if times else float("nan")
        lines += [
            f"Training: {n_slices} phantom slices, batch {args.batch_size}, {args.steps} steps; median "
            f"{s:.3f} s/step = **{args.batch_size / s:.0f} img/s** at 64 x 64 (D + G step, R1 every "
            f"{gen.r1_every}); total {sum(times):.0f} s for {len(times)} timed steps; "
            f"est. {600 * s:.0f} s for 600 steps. Final losses: "
            + ", ".join(f"{k} {v:.3f}" for k, v in last.items()) + ".", ""]
    fid = condition_fidelity(gen, tag, RESULTS, grid=not args.no_grid)
    load_after = os.getloadavg()
    lines += [
        f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, "
        f"{'bf16 autocast' if args.amp == 'bf16' and not args.run else 'fp32'}; load average "
        f"(1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after.",
        "",
        "| condition | area asked (train quantile) | sampled mask area, mean [95% CI] | empty masks |",
        "|---|---|---|---|",
        f"| small (10% quantile of gland slices) | {fid['area_q10']:.4f} | {fid['small_area']:.4f} "
        f"[{fid['small_ci'][0]:.4f}, {fid['small_ci'][1]:.4f}] | {fid['small_empty']:.2f} |",
        f"| large (90% quantile) | {fid['area_q90']:.4f} | {fid['large_area']:.4f} "
        f"[{fid['large_ci'][0]:.4f}, {fid['large_ci'][1]:.4f}] | {fid['large_empty']:.2f} |",
        "",
        f"Over 256 conditions drawn from the training slices: Pearson r(asked area, sampled area) = "
        f"{fid['pearson']:.2f}; mean sampled area {fid['sampled_area']:.4f} (training {fid['train_area']:.4f}). "
        f"Grid by area (rows small -> large, columns share latents): {fid['png']}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        out = RESULTS / f"gen_{NAME}.md"
        previous = out.read_text() if out.is_file() else f"# {NAME}: benchmark log\n\n"
        out.write_text(previous + text + "\n")


if __name__ == "__main__":
    main()
