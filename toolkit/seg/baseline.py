"""The real-data baseline U-Net, trained once per (data, split, segmenter settings, seed) and cached.

Ranking N generators compares each against the same baselines, so they are
trained once and kept on disk under ``cache_dir/seg_baselines/``. The key
hashes everything that decides the trained weights: the data fingerprint,
the train and validation slices, the segmenter settings, the seed, the
resolved precision, the device type and the CPU thread count per U-Net (a
different thread count gives different weights). Under ``seg.processes``
(auto, or N > 1) each U-Net trains at one thread, in a worker process or in
this one: the weights are the same either way, so are the key and the file.
Missing baselines train together (:meth:`BaselineStore.get_many`), or with
the other arms of a ``dice_gain`` evaluation (:meth:`BaselineStore.add`).

One :class:`BaselineStore` lives on the evaluation context (and serves the
generator's ``TrainContext.segmenter``): ``dice_gain``'s baseline arm and the
``seg`` feature space ask it for the same network, in any order.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from toolkit.data.slices import SliceSet
from toolkit.io import atomic_write
from toolkit.runtime import reproducible, resolve_precision
from toolkit.seg.batched import Job, plan, train_unets, unet_threads
from toolkit.seg.train import Pool, TrainResult, build_unet
from toolkit.settings import SegSettings

#: Bump when training changes in a way the settings do not show, to invalidate old caches.
CACHE_VERSION = 2  # 2: Feed, schedule and augmentation levels (protocol v2)


class BaselineStore:
    """Baseline U-Nets by seed: from memory, the disk cache, or freshly trained (``seg.threads``/``processes``).

    Args:
        train / val: the real training and validation slices.
        data_fingerprint: hash of the real data and its preprocessing.
        seg: the segmenter settings.
        device: where to train and predict.
        cache_dir: folder of the disk cache (``<cache>/eval``).
    """

    def __init__(self, train: SliceSet, val: SliceSet, data_fingerprint: str, seg: SegSettings,
                 device: torch.device | str, cache_dir: str | Path) -> None:
        self.train, self.val = train, val
        self.data_fingerprint = data_fingerprint
        self.seg = seg
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir)
        self._memory: dict[str, TrainResult] = {}
        self.trained = 0  # how many baselines this store trained (the rest came from a cache)

    def key(self, seed: int, threads: int) -> str:
        """Hash of everything that decides the baseline's weights."""
        payload = {
            "version": CACHE_VERSION,
            "data": self.data_fingerprint,
            "train_patients": sorted(self.train.patients()),
            "val_patients": sorted(self.val.patients()),
            "train_slices": self.train.identity(),  # slice selection varies with its seed and margin
            "val_slices": self.val.identity(),
            "config": self.seg.to_dict(),
            "seed": seed,
            "amp": str(resolve_precision(self.seg.precision, self.device)),
            "device": self.device.type,
            "threads": threads,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def path(self, key: str) -> Path:
        return self.cache_dir / "seg_baselines" / f"baseline-{key}.pt"

    def _threads(self) -> int | None:
        """Threads per U-Net under the segmenter settings (None: the current count); the key records it."""
        return unet_threads(self.seg, self.device)

    def job(self, seed: int) -> Job:
        """The training job of the baseline for ``seed`` (real training slices only)."""
        return Job([Pool.of(self.train, name="real")], seed)

    def _lookup(self, seed: int, threads: int) -> TrainResult | None:
        key = self.key(seed, threads)
        if key in self._memory:
            return self._memory[key]
        path = self.path(key)
        if path.is_file():
            try:
                self._memory[key] = self._load(path)
            except Exception as exc:  # truncated, not a checkpoint, other tensors: a cache entry is retrained
                warnings.warn(f"cached baseline {path} is damaged ({type(exc).__name__}: {str(exc)[:200]}); it is "
                              "trained again and replaced (nothing else is affected)", stacklevel=2)
                return None
            return self._memory[key]
        return None

    def missing(self, seeds: list[int]) -> list[int]:
        """The seeds (in order, once each) whose baseline is neither in memory nor in the disk cache."""
        with reproducible(self._threads(), self.device) as threads:
            return [s for s in dict.fromkeys(seeds) if self._lookup(s, threads) is None]

    def add(self, seed: int, result: TrainResult) -> None:
        """Keep (and cache on disk) a baseline trained elsewhere, e.g. with other U-Nets by ``train_unets``.

        It must have been trained from :meth:`job` with these settings at :meth:`_threads` threads
        per U-Net (what ``dice_gain`` does); the key records that count.
        """
        with reproducible(self._threads(), self.device) as threads:
            key = self.key(seed, threads)
            self._save(self.path(key), result, seed)
            self._memory[key] = result
            self.trained += 1

    def get_many(self, seeds: list[int]) -> list[tuple[TrainResult, bool]]:
        """The baselines for ``seeds`` and whether this call trained each; the missing ones train together
        (``seg.processes``: in parallel processes on a CPU)."""
        todo = self.missing(seeds)
        if todo:
            how = plan(self.seg, self.device)
            with reproducible(how.threads, self.device) as threads:
                results = train_unets([self.job(s) for s in todo], self.val, self.seg, self.device,
                                      processes=how.processes, threads=threads)
            for seed, result in zip(todo, results):
                self.add(seed, result)
        with reproducible(self._threads(), self.device) as threads:
            return [(self._lookup(s, threads), s in todo) for s in seeds]

    def get(self, seed: int = 0) -> tuple[TrainResult, bool]:
        """The baseline for ``seed`` and whether this call trained it."""
        return self.get_many([seed])[0]

    def model(self, seed: int = 0) -> torch.nn.Module:
        """The baseline U-Net for ``seed`` in eval mode (``encode`` gives bottleneck features)."""
        return self.get(seed)[0].model

    def _load(self, path: Path) -> TrainResult:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_unet(self.seg)
        model.load_state_dict(state["state_dict"])
        model = model.to(self.device)
        if self.seg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.eval()
        return TrainResult(model, state["best_step"], state["best_val_dice"], state["seconds"],
                           [tuple(h) for h in state["history"]], steps_done=state["steps_done"],
                           images_seen=state["images_seen"])

    def _save(self, path: Path, result: TrainResult, seed: int) -> None:
        state = {
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()},
            "config": self.seg.to_dict(),
            "seed": seed,
            "best_step": result.best_step,
            "best_val_dice": result.best_val_dice,
            "seconds": result.seconds,
            "history": [list(h) for h in result.history],
            "steps_done": result.steps_done,
            "images_seen": result.images_seen,
        }
        atomic_write(path, lambda f: torch.save(state, f))  # a killed run never leaves a half-written baseline
