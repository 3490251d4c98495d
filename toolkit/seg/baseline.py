"""The real-data baseline U-Net, trained once per (data, split, segmenter config, seed) and cached.

Ranking N generators compares each against the same baselines, so they are
trained once and kept on disk under ``ctx.cache_dir/seg_baselines/``. The key
hashes everything that decides the trained weights: the data fingerprint,
the train and validation patients, the segmenter config, the seed, the
resolved precision, the device type and the CPU thread count (a different
thread count gives different weights).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from toolkit.plugin import EvalContext
from toolkit.seg.runtime import reproducible, resolve_precision
from toolkit.seg.train import Pool, SegConfig, TrainResult, build_unet, train_unet

#: Bump when training changes in a way the config does not show, to invalidate old caches.
CACHE_VERSION = 1


def seg_config(**seg_kwargs: Any) -> SegConfig:
    """A SegConfig from keyword arguments; an unknown key names the valid ones."""
    valid = {f.name for f in fields(SegConfig)}
    unknown = sorted(set(seg_kwargs) - valid)
    if unknown:
        raise ValueError(f"unknown segmenter setting(s) {unknown}; valid: {', '.join(sorted(valid))}")
    return SegConfig(**seg_kwargs)


def baseline_key(ctx: EvalContext, seed: int, config: SegConfig) -> str:
    """Hash of everything that decides the baseline's weights."""
    payload = {
        "version": CACHE_VERSION,
        "data": ctx.data_fingerprint,
        "train_patients": sorted(ctx.train.patients()),
        "val_patients": sorted(ctx.val.patients()),
        "train_slices": ctx.train.identity(),  # slice selection varies with its seed and margin
        "val_slices": ctx.val.identity(),
        "config": config.to_dict(),
        "seed": seed,
        "amp": str(resolve_precision(config.precision, ctx.device)),
        "device": torch.device(ctx.device).type,
        "threads": torch.get_num_threads(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _cache_path(ctx: EvalContext, key: str) -> Path:
    return Path(ctx.cache_dir) / "seg_baselines" / f"baseline-{key}.pt"


def _save(path: Path, result: TrainResult, config: SegConfig, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()},
        "config": config.to_dict(),
        "seed": seed,
        "best_step": result.best_step,
        "best_val_dice": result.best_val_dice,
        "seconds": result.seconds,
        "history": [list(h) for h in result.history],
    }
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written baseline


def baseline_result(ctx: EvalContext, seed: int, config: SegConfig) -> tuple[TrainResult, bool]:
    """The baseline for ``seed``: from memory, the disk cache, or freshly trained.

    Returns:
        (result, trained): ``trained`` is True when this call trained it.
    """
    key = baseline_key(ctx, seed, config)
    memory: dict[str, TrainResult] = ctx.shared.setdefault("seg_baselines", {})
    if key in memory:
        return memory[key], False
    path = _cache_path(ctx, key)
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_unet(config)
        model.load_state_dict(state["state_dict"])
        model = model.to(ctx.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.eval()
        result = TrainResult(model, state["best_step"], state["best_val_dice"], state["seconds"],
                             [tuple(h) for h in state["history"]])
        memory[key] = result
        return result, False
    result = train_unet([Pool.of(ctx.train, name="real")], ctx.val, config, seed, ctx.device)
    _save(path, result, config, seed)
    memory[key] = result
    return result, True


def load_or_train_baseline(ctx: EvalContext, seed: int = 0, **seg_kwargs: Any) -> torch.nn.Module:
    """The cached real-data baseline U-Net (eval mode) for ``seed``.

    With no ``seg_kwargs`` it uses the segmenter config the ``dice_gain``
    evaluator recorded in ``ctx.shared["baseline_unet_config"]`` when it ran
    first (so both share one network), else the :class:`SegConfig` defaults,
    and the thread count it recorded in ``ctx.shared["baseline_unet_threads"]``.
    Its :meth:`~toolkit.nn.unet.UNet.encode` gives bottleneck features.
    """
    threads = ctx.shared.get("baseline_unet_threads")
    if not seg_kwargs:
        if "baseline_unet_config" in ctx.shared:
            seg_kwargs = dict(ctx.shared["baseline_unet_config"])
        elif ctx.config is not None:
            # dice_gain has not run in this process: build it from the run's config, so this is
            # the same network (and cache entry) its baseline arm trains.
            from toolkit.config import plugin_kwargs
            from toolkit.registry import EVALUATORS

            cls = EVALUATORS.get("dice_gain")
            section = (ctx.config.get("evaluators") or {}).get("dice_gain", {})
            owner = cls(**plugin_kwargs(cls, section, tiny=bool((ctx.config.get("run") or {}).get("tiny"))))
            seg_kwargs, threads = owner.seg.to_dict(), owner.threads
    # Train (or look up) under the thread count dice_gain used, so the cache key matches.
    with reproducible(threads, ctx.device):
        return baseline_result(ctx, seed, seg_config(**seg_kwargs))[0].model
