"""Why does vaegan's discriminator stay at chance? Three short diagnostics on the phantom.

``separation``: D alone, trained on the quick profile's real training pairs
against a clearly different fake set (the same pairs blurred, Gaussian
sigma 1.5 px, masks blurred too, i.e. soft). A D that cannot separate these
within a couple of hundred steps cannot teach a generator anything. Each
variant changes one thing from vaegan's D (spectral norm on every layer
incl. the head, DiffAugment color,translation,cutout at 64 x 64, lr 1e-3,
16 channels).

``recon``: D alone against a harder, realistic fake set: a VAE's own
reconstructions and prior samples of the training pairs (mask
probabilities, as vaegan's D sees them), from ``--pretrain`` VAE steps or
from a finished run's checkpoint (``--from-run``).

``training``: vaegan itself. One VAE phase (``--pretrain`` steps, no GAN
terms) is trained once and shared; each variant then continues with the
adversarial phase for ``--steps`` steps from that state, and the D loss
curve (hinge chance = 2), D's real/fake scores, and the masks and sharpness
of 256 prior samples (``toolkit.data.maskshape``) are recorded.

    python benchmarks/vaegan_d_diagnostics.py separation --steps 150
    python benchmarks/vaegan_d_diagnostics.py recon --steps 200 --from-run /tmp/bench-vaegan/vae-phantom \\
        --variants "no SN, policy none;SN all, policy none;no SN + color (new default)"
    python benchmarks/vaegan_d_diagnostics.py training --pretrain 200 --steps 200 \\
        --variant 'old:d_spectral_norm=all,diffaug=color,translation,cutout' --variant 'new:'

A variant is ``label:key=value,key=value`` of vaegan keyword arguments
(values parsed as YAML; a policy with commas goes last). Prints a table and
writes JSON lines to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.config import plugin_kwargs, resolve  # noqa: E402
from toolkit.data import load_dataset, select_slices, split_patients  # noqa: E402
from toolkit.data.maskshape import laplacian_sharpness, mask_areas, single_component_share  # noqa: E402
from toolkit.nn import losses  # noqa: E402
from toolkit.nn.diffaug import DiffAugment  # noqa: E402
from toolkit.nn.pairs import encode_pair  # noqa: E402
from toolkit.nn.patchgan import PatchGAN  # noqa: E402
from toolkit.registry import GENERATORS  # noqa: E402
from toolkit.train.loop import batch_indices  # noqa: E402
from toolkit.types import DataSpec  # noqa: E402

SEPARATION_VARIANTS = {
    "vaegan (SN all, c,t,cutout 0.5)": {},
    "SN body (head free)": {"sn": "body"},
    "no SN + R1 1": {"sn": "none", "r1": 1.0},
    "policy color,translation": {"policy": "color,translation"},
    "policy none": {"policy": "none"},
    "SN body + color,translation": {"sn": "body", "policy": "color,translation"},
    "SN body + c,t + lr 2e-3": {"sn": "body", "policy": "color,translation", "lr": 2e-3},
    "no SN + color,translation": {"sn": "none", "policy": "color,translation"},
    "no SN + translation": {"sn": "none", "policy": "translation"},
    "no SN + c,t + 32 channels": {"sn": "none", "policy": "color,translation", "channels": 32},
    "no SN + c,t + lr 3e-3": {"sn": "none", "policy": "color,translation", "lr": 3e-3},
    "no SN, policy none": {"sn": "none", "policy": "none"},
    "SN body, policy none": {"sn": "body", "policy": "none"},
    "SN all, policy none": {"sn": "all", "policy": "none"},
    "no SN + color (new default)": {"sn": "none", "policy": "color"},
}


def selected(args) -> list[tuple[str, dict]]:
    if not args.variants:
        return list(SEPARATION_VARIANTS.items())
    wanted = [w.strip() for w in args.variants.split(";")]
    return [(k, SEPARATION_VARIANTS[k]) for k in wanted]


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def blur(x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` (edges replicated)."""
    r = int(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def load_train(overrides: list[str]):
    cfg = resolve(generator="vaegan", profile="quick", overrides=["run.evaluators=[]", *overrides])
    slices, _ = load_dataset(cfg.data)
    split = split_patients(slices.patients(), cfg.split)
    return cfg, select_slices(slices.of_patients(split["train"]), cfg.data, cfg.split.seed)


def train_d(real: torch.Tensor, fake: torch.Tensor, steps: int, batch: int, sn: str = "all",
            policy: str = "color,translation,cutout", cutout: float = 0.5, lr: float = 1e-3,
            channels: int = 16, r1: float = 0.0, seed: int = 0) -> list[float]:
    """Hinge D loss per step of a PatchGAN trained on ``real`` against ``fake`` (both [N, 2, H, W])."""
    torch.manual_seed(seed)
    d = PatchGAN(real.shape[1], real.shape[-1], channels, 128, 8, spectral_norm=sn)
    aug = DiffAugment(policy, cutout_ratio=cutout, seed=seed)
    opt = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(steps):
        i, j = torch.randint(0, len(real), (batch,), generator=g), torch.randint(0, len(fake), (batch,), generator=g)
        ra = aug(real[i])
        fa = aug(fake[j])
        if r1:
            ra = ra.detach().requires_grad_(True)
        dr, df = d(ra)[0], d(fa)[0]
        loss = losses.hinge_d_loss(dr, df)
        total = loss + 0.5 * r1 * losses.r1_penalty(dr, ra) if r1 else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        curve.append(loss.item())
    return curve


def separation(args) -> list[dict]:
    _, train = load_train(args.set)
    batch = train.to_batch(np.arange(len(train)))
    real = encode_pair(batch.image, batch.mask)
    fake = encode_pair(blur(batch.image), blur(batch.mask))
    rows = []
    for label, kw in selected(args):
        start = time.perf_counter()
        curve = train_d(real, fake, args.steps, args.batch_size, **kw)
        rows.append({"mode": "separation", "variant": label, **kw, "steps": args.steps,
                     "d_loss_first25": _mean(curve[:25]),
                     "d_loss_at_50": _mean(curve[40:50]),
                     "d_loss_last25": _mean(curve[-25:]),
                     "seconds": time.perf_counter() - start})
        print(f"{label:34s} d_loss@50 {rows[-1]['d_loss_at_50']:.3f}  last25 {rows[-1]['d_loss_last25']:.3f}"
              f"  ({rows[-1]['seconds']:.1f} s)", flush=True)
    return rows


def parse_variant(text: str) -> tuple[str, dict]:
    label, _, rest = text.partition(":")
    kwargs = {}
    while rest:
        key, _, rest = rest.partition("=")
        if key.strip() == "diffaug":  # a policy has commas: it takes the rest
            kwargs["diffaug"], rest = rest, ""
            break
        value, _, rest = rest.partition(",")
        kwargs[key.strip()] = yaml.safe_load(value)
    return label, kwargs


def pretrained_vae(args, cfg, train, cls, base_kwargs, spec):
    """vaegan after ``--pretrain`` VAE-only steps; kept in ``--cache`` (a .pt file) when given."""
    torch.manual_seed(cfg["seed"])
    pre = cls(spec, "cpu", **{**base_kwargs, "adv_start_step": 10**9})
    if args.cache and args.cache.exists():
        pre.load_state_dict(torch.load(args.cache, weights_only=True))
        return pre
    pre.train()
    start = time.perf_counter()
    for step in range(args.pretrain):
        pre.train_step(train.to_batch(batch_indices(step, len(train), args.batch_size, cfg["seed"]).numpy()), step)
    print(f"VAE phase: {args.pretrain} steps in {time.perf_counter() - start:.0f} s", flush=True)
    if args.cache:
        torch.save(pre.state_dict(), args.cache)
    return pre


def recon(args) -> list[dict]:
    """D alone against the VAE phase's own reconstructions and prior samples (a fixed, hard fake set)."""
    cfg, train = load_train(args.set)
    cls = GENERATORS.get("vaegan")
    base_kwargs = plugin_kwargs(cls, cfg["generator"])
    pre = pretrained_vae(args, cfg, train, cls, base_kwargs, DataSpec(image_size=train.image_size))
    if args.from_run:  # a finished vae / vaegan run's networks instead (same encoder and decoder)
        state = torch.load(args.from_run / "checkpoints" / "last.pt", weights_only=False)["generator"]
        for name in ("encoder", "decoder", "latent_prior"):
            getattr(pre, name).load_state_dict(state[name])
    pre.eval()
    batch = train.to_batch(np.arange(len(train)))
    real = encode_pair(batch.image, batch.mask)
    with torch.no_grad():
        mu, _ = pre.encoder(real)
        image, logits = pre.decoder(torch.cat([mu, pre.draw_latents(torch.randn(len(mu), pre.z_dim))]))
    fake = encode_pair(image, torch.sigmoid(logits))
    rows = []
    for label, kw in selected(args):
        start = time.perf_counter()
        curve = train_d(real, fake, args.steps, args.batch_size, **kw)
        rows.append({"mode": "recon", "variant": label, **kw, "steps": args.steps,
                     "d_loss_at_50": _mean(curve[40:50]), "d_loss_last25": _mean(curve[-25:]),
                     "seconds": time.perf_counter() - start})
        print(f"{label:34s} d_loss@50 {rows[-1]['d_loss_at_50']:.3f}  last25 {rows[-1]['d_loss_last25']:.3f}"
              f"  ({rows[-1]['seconds']:.1f} s)", flush=True)
    return rows


def training(args) -> list[dict]:
    cfg, train = load_train(args.set)
    cls = GENERATORS.get("vaegan")
    base_kwargs = plugin_kwargs(cls, cfg["generator"])
    spec = DataSpec(image_size=train.image_size)
    pre = pretrained_vae(args, cfg, train, cls, base_kwargs, spec)
    real_batch = train.to_batch(np.arange(len(train)))
    real_sharp = laplacian_sharpness(real_batch.image.numpy())
    real_single = single_component_share(real_batch.mask.numpy())
    rows = []
    for text in args.variant:
        label, kw = parse_variant(text)
        torch.manual_seed(cfg["seed"] + 1)
        gen = cls(spec, "cpu", **{**base_kwargs, **kw, "adv_start_step": args.pretrain})
        for name in ("encoder", "decoder", "opt_g", "latent_prior", "noise"):
            getattr(gen, name).load_state_dict(getattr(pre, name).state_dict())
        if gen.ema is not None and pre.ema is not None:
            gen.ema.load_state_dict(pre.ema.state_dict())
        gen.train()
        curve = []
        start = time.perf_counter()
        for k in range(args.steps):
            step = args.pretrain + k
            stats = gen.train_step(train.to_batch(batch_indices(step, len(train), args.batch_size,
                                                                cfg["seed"]).numpy()), step)
            curve.append(stats)
        seconds = time.perf_counter() - start
        gen.eval()
        fake = gen.sample(256, generator=torch.Generator().manual_seed(0))
        window = [c["d_loss"] for c in curve[-25:]]
        row = {"mode": "training", "variant": label, "kwargs": kw, "pretrain": args.pretrain, "steps": args.steps,
               "d_loss_by_25": [round(statistics.mean(c["d_loss"] for c in curve[i:i + 25]), 3)
                                for i in range(0, len(curve), 25)],
               "d_loss_last25": statistics.mean(window),
               "d_real_last25": statistics.mean(c["d_real"] for c in curve[-25:]),
               "d_fake_last25": statistics.mean(c["d_fake"] for c in curve[-25:]),
               "g_fm_last25": statistics.mean(c["g_fm"] for c in curve[-25:]),
               "g_adv_last25": statistics.mean(c["g_adv"] for c in curve[-25:]),
               "image_l1_last25": statistics.mean(c["image"] for c in curve[-25:]),
               "single_component_share": single_component_share(fake.mask.numpy()),
               "real_single_component_share": real_single,
               "area_mean": float(mask_areas(fake.mask.numpy()).mean()),
               "real_area_mean": float(mask_areas(real_batch.mask.numpy()).mean()),
               "sharpness": laplacian_sharpness(fake.image.numpy()), "real_sharpness": real_sharp,
               "seconds": seconds}
        rows.append(row)
        print(f"{label:20s} d_loss/25 {row['d_loss_by_25']}  real {row['d_real_last25']:+.2f} "
              f"fake {row['d_fake_last25']:+.2f}  fm {row['g_fm_last25']:.3f}  L1 {row['image_l1_last25']:.3f}  "
              f"single {row['single_component_share']:.2f} (real {real_single:.2f})  "
              f"sharp {row['sharpness']:.4f} (real {real_sharp:.4f})  {seconds:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("separation", "recon", "training"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pretrain", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variant", action="append", default=[], help="training: label:key=value,...")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. data.path=...")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--from-run", type=Path, default=None, help="recon: take the VAE from this run directory")
    parser.add_argument("--variants", default=None, help="separation/recon: ';'-separated labels to run (default all)")
    parser.add_argument("--cache", type=Path, default=None, help="keep the VAE phase's state in this .pt file")
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"load before {' '.join(load_before)}", flush=True)
    if args.mode == "training" and not args.variant:
        args.variant = ["vaegan defaults:"]
    rows = {"separation": separation, "recon": recon, "training": training}[args.mode](args)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    print(f"load after {' '.join(load_after)}")
    if args.out:
        with args.out.open("a") as f:
            for row in rows:
                f.write(json.dumps({**row, "load_before": load_before, "load_after": load_after,
                                    "overrides": args.set}) + "\n")


if __name__ == "__main__":
    main()
