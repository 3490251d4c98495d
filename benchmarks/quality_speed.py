"""Time every quality metric for 1,000 synthetic vs 1,000 real 64 x 64 slices on CPU.

Random-CNN features (no download, no training), procedural slices (no real
data). Each evaluator runs on a cold cache, so the times include feature
extraction. Next to ours, pytorch-fid's Fréchet distance
(``np.cov`` + ``calculate_frechet_distance``, scipy ``sqrtm``) on the very same
features, and the ratio of the two; plus the same comparison on 2048-d
features (the Inception width) to show where the Gram form pays off.

Usage:
    PYTHONPATH=. python benchmarks/quality_speed.py [--n 1000] [--size 64]

Prints a table and writes benchmarks/results/quality_speed.md, with the
machine load (``uptime``) at the start and end, since these CPUs are shared.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.data.slices import SliceSet  # noqa: E402
from toolkit.metrics.extractors import random_extractor  # noqa: E402
from toolkit.metrics.frechet import frechet_distance_features  # noqa: E402
from toolkit.plugin import EvalContext  # noqa: E402
from toolkit.registry import EVALUATORS  # noqa: E402
from toolkit.seg.baseline import BaselineStore  # noqa: E402
from toolkit.settings import SegSettings  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "quality_speed.md"


def blobs(n: int, size: int, seed: int) -> np.ndarray:
    """Ellipses of random position and radii plus noise, in [-1, 1] (a cheap slice-like image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    c = rng.uniform(0.3, 0.7, (n, 2, 1, 1))
    r = rng.uniform(0.1, 0.3, (n, 2, 1, 1))
    inside = ((yy - c[:, 0]) / r[:, 0]) ** 2 + ((xx - c[:, 1]) / r[:, 1]) ** 2 < 1
    img = np.where(inside, 0.6, -0.6) + rng.normal(0, 0.1, (n, size, size))
    return np.clip(img, -1, 1).astype(np.float32)


def slices(images: np.ndarray, name: str) -> SliceSet:
    n = len(images)
    return SliceSet(images, (images > 0).astype(np.uint8), np.zeros((n, 2), np.float32),
                    np.array([f"{name}{i // 20}" for i in range(n)]), np.arange(n, dtype=np.int64))


def pytorch_fid_fd(real: np.ndarray, fake: np.ndarray) -> float:
    """pytorch-fid's own recipe from activations: mean, np.cov, calculate_frechet_distance."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(calculate_frechet_distance(real.mean(0), np.cov(real, rowvar=False),
                                                fake.mean(0), np.cov(fake, rowvar=False)))


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="slices per set")
    parser.add_argument("--size", type=int, default=64, help="slice side in pixels")
    args = parser.parse_args()
    load_before = uptime()

    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        n = args.n
        train, val = slices(blobs(n, args.size, 1), "train"), slices(blobs(n // 4, args.size, 2), "val")
        device, cache, seg = torch.device("cpu"), Path(tmp) / "cache", SegSettings()
        ctx = EvalContext(
            train=train, val=val,
            test=slices(blobs(8, args.size, 3), "test"), synthetic=slices(blobs(n, args.size, 4), "synthetic"),
            device=device, run_dir=Path(tmp) / "run", cache_dir=cache, data_fingerprint="benchmark",
            baselines=BaselineStore(train, val, "benchmark", seg, device, cache), seg=seg, seed=0,
        )
        # Every quality evaluator with its defaults, on random features, cold cache.
        settings = {"fd": {"features": "random"}, "prdc": {"features": "random"},
                    "diversity": {}, "memorization": {}}
        total = 0.0
        for name, kwargs in settings.items():
            _, seconds = timed(EVALUATORS.get(name)(**kwargs).evaluate, ctx)
            total += seconds
            rows.append((f"evaluator `{name}` {kwargs or ''}".strip(), seconds, ""))
        rows.append(("**all quality metrics**", total, f"{n} vs {n} slices at {args.size} x {args.size}"))

        # The Fréchet distance alone, ours vs pytorch-fid, on the same features.
        extractor = random_extractor(0)
        real, extract_s = timed(extractor, ctx.train.images)
        fake = extractor(ctx.synthetic.images)
        rows.append((f"random-CNN features of {n} slices ({real.shape[1]}-d)", extract_s, ""))
        comparisons = [(f"random CNN, {real.shape[1]}-d", real, fake)]
        rng = np.random.default_rng(0)
        wide = rng.normal(size=(n, 2048)), rng.normal(size=(n, 2048)) * 1.1 + 0.05
        comparisons.append(("Gaussian, 2048-d (Inception width)", *wide))
        for label, a, b in comparisons:
            ours, ours_s = timed(frechet_distance_features, a, b)
            ref, ref_s = timed(pytorch_fid_fd, a, b)
            rows.append((f"Fréchet distance, ours ({label})", ours_s, f"FD {ours:.6g}"))
            rows.append((f"Fréchet distance, pytorch-fid ({label})", ref_s,
                         f"FD {ref:.6g}; pytorch-fid / ours = {ref_s / ours_s:.1f}x; "
                         f"relative difference {abs(ours - ref) / max(abs(ref), 1e-12):.1e}"))
    load_after = uptime()

    table = ["| step | seconds | note |", "|---|---:|---|"]
    table += [f"| {label} | {seconds:.2f} | {note} |" for label, seconds, note in rows]
    text = "\n".join([
        "# Quality metrics: CPU time for 1,000 synthetic vs 1,000 real slices",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/quality_speed.py --n {args.n} --size {args.size}`",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"numpy {np.__version__}. Shared CPUs: load before `{load_before}`, after `{load_after}`.",
        "",
        "Procedural ellipse slices, random-CNN features, cold feature cache; evaluators at their "
        "default settings (fd: FD + 20 bootstrap rounds + KID over 100 subsets of 100; prdc k=5; "
        "diversity 2,000 pairs per set; memorization in pixel space against all training slices).",
        "",
        *table,
        "",
    ])
    print(text)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(text)


if __name__ == "__main__":
    main()
