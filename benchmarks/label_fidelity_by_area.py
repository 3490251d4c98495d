"""Where does the real-trained U-Net disagree with a run's synthetic masks? Label fidelity by mask-area tercile.

    python benchmarks/label_fidelity_by_area.py runs/RUN [runs/RUN2 ...]

For each run: the seed-0 baseline U-Net of ``dice_gain`` (from the baseline
cache; trained here if missing) on the run's synthetic set, its real training
slices and its validation slices. Slices are binned by mask area (empty, then
terciles of the non-empty areas); each bin prints ``n / mean slice Dice /
share with any predicted pixel / predicted pixels over mask pixels``. Pooled is
the Dice over all pixels, as ``label_fidelity_dice``. A ratio below 1 means the
U-Net under-segments: the image shows less gland than its mask outlines.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.experiment import baseline_store, load_run_config, prepare_data  # noqa: E402
from toolkit.rundir import RunDir  # noqa: E402
from toolkit.runtime import cpu_supports_bf16, resolve_device, set_threads  # noqa: E402
from toolkit.seg.predict import predict_probs  # noqa: E402


def bins_line(images: np.ndarray, masks: np.ndarray, model: torch.nn.Module, device: torch.device) -> str:
    amp = torch.bfloat16 if cpu_supports_bf16() else None
    pred = predict_probs(model, images, device=device, amp_dtype=amp, channels_last=amp is not None) > 0.5
    truth = masks.astype(bool).reshape(len(masks), -1)
    pred = pred.reshape(len(masks), -1)
    inter, total, area = (pred & truth).sum(1), pred.sum(1) + truth.sum(1), truth.mean(1)
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    q = np.quantile(area[area > 0], [1 / 3, 2 / 3]) if (area > 0).any() else [0.0, 0.0]
    bins = {"empty": area == 0, "small": (area > 0) & (area <= q[0]),
            "mid": (area > q[0]) & (area <= q[1]), "large": area > q[1]}
    parts = [f"{k} {m.sum()}/{dice[m].mean():.2f}/{(pred[m].sum(1) > 0).mean():.2f}/"
             f"{(pred[m].sum(1) / np.maximum(truth[m].sum(1), 1)).mean():.2f}" for k, m in bins.items() if m.any()]
    return f"pooled {2 * inter.sum() / max(total.sum(), 1):.3f}  " + "  ".join(parts)


def main(run_dirs: list[str]) -> None:
    set_threads(None)
    device = resolve_device("cpu")
    for d in run_dirs:
        run = RunDir(Path(d))
        config = load_run_config(run.path)
        prepared = prepare_data(config, run)
        (result, _), = baseline_store(config, prepared, device).get_many([0])
        model = result.model.eval()
        for name, slices in (("synthetic", run.load_synthetic()), ("real_train", prepared.train),
                             ("real_val", prepared.val)):
            print(f"{Path(d).name:24s} {name:10s} n={len(slices):4d} "
                  f"{bins_line(slices.images, slices.masks, model, device)}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
