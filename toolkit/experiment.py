"""Run orchestration: data -> split -> train -> sample -> evaluate, through files in a run directory.

Each stage reads what the previous one wrote (``config.yaml``, ``split.json``,
``checkpoints/last.pt``, ``synthetic/synthetic.npz``), so any stage can be
re-run alone: ``evaluate_run`` re-scores an existing run's synthetic set.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import save_image

import toolkit
from toolkit import data as datalib
from toolkit.config import Config, plugin_kwargs, resolve
from toolkit.data.slices import SliceSet
from toolkit.data.masks import build_mask_source
from toolkit.plugin import EvalContext, Evaluator, Generator, TrainContext
from toolkit.registry import EVALUATORS, GENERATORS
from toolkit.train.device import resolve_amp, resolve_channels_last, resolve_device, set_threads
from toolkit.train.distributed import init_from_env
from toolkit.train.loop import checkpoint_path, train_generator
from toolkit.train.runlog import RunLog
from toolkit.train.sampling import make_sampler, sample_set
from toolkit.train.seeding import seed_everything
from toolkit.train.visuals import pair_grid
from toolkit.types import DataSpec

SYNTHETIC = Path("synthetic") / "synthetic.npz"


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (exists, missing, incomplete)."""


@dataclass
class PreparedData:
    """The real data of one run, split by patient."""

    train: SliceSet  # training slices after slice selection (what the generator sees)
    val: SliceSet  # every slice of the validation patients
    test: SliceSet  # every slice of the test patients
    split: dict[str, list[str]]
    fingerprint: str


# Run directories -------------------------------------------------------------------------


def default_run_name(generator: str) -> str:
    return f"{generator}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_run_dir(out: str | Path, name: str, force: bool = False, resume: bool = False) -> Path:
    """The run directory ``out/name``, never overwriting an existing run silently."""
    run_dir = Path(out) / name
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise RunError(f"--resume: {run_dir} is not a run directory (no config.yaml); "
                           f"start it without --resume, or name an existing run with --name")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            raise RunError(f"run directory {run_dir} already exists. Use --resume to continue it, "
                           f"--force to delete and replace it, or another --name")
        if not (run_dir / "config.yaml").is_file():
            raise RunError(f"--force: {run_dir} is not empty and is not a ganseg run (no config.yaml); "
                           "refusing to delete it. Choose another --name or --out")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def load_run_config(run_dir: Path, overrides: tuple[str, ...] = ()) -> Config:
    """The config a run was made with, plus optional ``--set`` overrides."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory: {path} is missing")
    return resolve(profile=None, config_files=[path], overrides=overrides)


# Stages ------------------------------------------------------------------------------------


def prepare_data(config: Config, run_dir: Path | None = None) -> PreparedData:
    """Load slices, split by patient (or reuse the run's saved split), select training slices."""
    data_cfg = config["data"]
    slices, fingerprint = datalib.load_dataset(data_cfg, datalib.cache_dir())
    split_file = None if run_dir is None else Path(run_dir) / "split.json"
    if split_file is not None and split_file.is_file():
        split = json.loads(split_file.read_text())["patients"]
        missing = sorted(set(sum(split.values(), [])) - set(slices.patients()))
        if missing:
            raise RunError(f"{split_file} names patients the data no longer has: {missing[:5]}")
    else:
        split = datalib.split_patients(slices.patients(), config["split"])
        if split_file is not None:
            split_file.write_text(json.dumps({"settings": config["split"], "patients": split}, indent=2))
    # Slice selection belongs to the data split, so generator seeds share the same training slices.
    train = datalib.select_slices(slices.of_patients(split["train"]), data_cfg, config["split"]["seed"])
    return PreparedData(train, slices.of_patients(split["val"]), slices.of_patients(split["test"]),
                        split, fingerprint)


def build_generator(config: Config, device: torch.device) -> Generator:
    """The configured generator on ``device`` (tiny settings under the config when run.tiny)."""
    cls = GENERATORS.get(config["run"]["generator"])
    spec = DataSpec(image_size=int(config["data"]["image_size"]))
    kwargs = plugin_kwargs(cls, config["generator"], tiny=config["run"]["tiny"])
    return cls(spec, device=device, **kwargs)


def build_evaluator(config: Config, name: str) -> Evaluator:
    cls = EVALUATORS.get(name)
    return cls(**plugin_kwargs(cls, config["evaluators"].get(name, {}), tiny=config["run"]["tiny"]))


def _writer(run_dir: Path, purge_step: int | None = None):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)


def run_experiment(
    config: Config,
    out: str | Path = "runs",
    name: str | None = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    quiet: bool = False,
) -> Path:
    """The whole chain for one generator; returns the run directory.

    ``resume`` continues a run from its last checkpoint and skips the stages
    it already finished.
    """
    device = resolve_device(config["train"]["device"])
    dist_info = init_from_env(device.type)  # a single process unless started by torchrun
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    threads = set_threads(config["train"]["threads"])
    # Build: evaluators and the seeded generator first, so a bad setting fails before
    # a run directory exists or any data is loaded.
    evaluators = {n: build_evaluator(config, n) for n in config["run"]["evaluators"]}
    seed_everything(config["seed"])
    gen = build_generator(config, device)
    gen.amp_dtype = resolve_amp(config["train"]["amp"], device)
    channels_last = resolve_channels_last(config["train"]["channels_last"], device)
    if channels_last:
        for module in gen.modules().values():
            module.to(memory_format=torch.channels_last)
    name = name or default_run_name(config["run"]["generator"])
    run_dir = Path(out) / name
    if dist_info.is_main:
        run_dir = open_run_dir(out, name, force=force, resume=resume)
        # On --resume this records any --set overrides, so a later `evaluate` sees what was run.
        (run_dir / "config.yaml").write_text(config.to_yaml())
    if dist_info.enabled:
        torch.distributed.barrier()

    ckpt = checkpoint_path(run_dir)
    start_step = 0
    if resume and ckpt.exists():
        start_step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"])
    writer = _writer(run_dir, purge_step=start_step or None) if dist_info.is_main else None
    runlog = RunLog(run_dir, writer, quiet=quiet or not dist_info.is_main)
    runlog.info(f"ganseg {toolkit.__version__}: run {run_dir} ({config['run']['generator']}, "
                f"device {device}, {threads} threads, {dist_info.world_size} process(es))")

    try:
        # Data: real slices split by patient; the generator sees training patients only.
        try:
            prepared = prepare_data(config, run_dir)
        except Exception:
            if not resume and dist_info.is_main:
                # Bad data: the run never started, so leave no directory to collide with the next try.
                runlog.close()
                writer.close()
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        runlog.info(f"data: {len(prepared.train)} training slices from {len(prepared.split['train'])} patients, "
                    f"{len(prepared.split['val'])} val / {len(prepared.split['test'])} test patients "
                    f"(fingerprint {prepared.fingerprint[:12]})")

        # Train: resume from the last checkpoint when asked.
        masks_cfg = dict(config["masks"])
        source = masks_cfg.pop("source")
        mask_source = build_mask_source(source, prepared.train, **masks_cfg) if gen.needs_masks else None
        gen.setup(TrainContext(train=prepared.train, mask_source=mask_source))
        sampler = make_sampler(gen, prepared.train)
        summary = train_generator(
            gen, prepared.train, config["train"], run_dir, runlog, sampler, seed=config["seed"],
            resume=resume, dist_info=dist_info, progress=progress and not quiet, channels_last=channels_last,
        )
        runlog.info(f"trained {summary['steps']} steps in {summary['seconds']} s")
        if not dist_info.is_main:
            return run_dir

        # Sample: the synthetic set, ratio x the real training slices, saved as arrays and a grid.
        n = max(1, round(config["run"]["synthetic_ratio"] * len(prepared.train)))
        synthetic = sample_set(sampler, n, seed=config["seed"] + 1)
        save_synthetic(synthetic, run_dir)
        runlog.info(f"sampled {n} synthetic pairs -> {run_dir / SYNTHETIC}")
        _write_results(run_dir, {"train": summary, "synthetic": describe_set(synthetic),
                                 "data": {"fingerprint": prepared.fingerprint,
                                          "train_slices": len(prepared.train),
                                          **{f"{k}_patients": len(v) for k, v in prepared.split.items()}}})

        # Evaluate: every configured evaluator, results merged into results.json.
        evaluate_prepared(config, run_dir, prepared, synthetic, device, runlog, writer, evaluators)
    finally:
        runlog.close()
        if writer is not None:
            writer.close()
    return run_dir


def save_synthetic(synthetic: SliceSet, run_dir: Path) -> None:
    path = run_dir / SYNTHETIC
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    synthetic.save(tmp)
    tmp.replace(path)
    k = min(64, len(synthetic))
    batch = synthetic.to_batch(np.arange(k))
    save_image(pair_grid(batch.image, batch.mask), run_dir / "synthetic" / "grid.png")


def describe_set(s: SliceSet) -> dict[str, Any]:
    gland = s.has_gland()
    return {"n": len(s), "gland_share": round(float(gland.mean()), 4) if len(s) else 0.0,
            "mean_gland_area": round(float(s.masks[gland].mean()), 4) if gland.any() else 0.0}


def evaluate_prepared(
    config: Config,
    run_dir: Path,
    prepared: PreparedData,
    synthetic: SliceSet,
    device: torch.device,
    runlog: RunLog,
    writer=None,
    evaluators: dict[str, Evaluator] | None = None,
) -> dict[str, Any]:
    """Run evaluators (default: ``run.evaluators``), write ``results.json`` and the HParams entry."""
    if evaluators is None:
        evaluators = {n: build_evaluator(config, n) for n in config["run"]["evaluators"]}
    ctx = EvalContext(
        train=prepared.train, val=prepared.val, test=prepared.test, synthetic=synthetic, device=device,
        run_dir=run_dir, cache_dir=datalib.cache_dir() / "eval", data_fingerprint=prepared.fingerprint,
        seed=int(config["seed"]), writer=writer, config=config.data,
    )
    metrics: dict[str, dict[str, Any]] = {}
    failures = []
    for name, evaluator in evaluators.items():
        runlog.info(f"evaluating: {name}")
        t0 = time.perf_counter()
        try:
            values = evaluator.evaluate(ctx)
        except Exception as exc:
            runlog.info(f"evaluator {name} failed: {type(exc).__name__}: {exc}")
            metrics[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failures.append(name)
            continue
        metrics[name] = {
            "values": values,
            "declared": list(evaluator.metrics),
            "primary": evaluator.primary,
            "higher_is_better": evaluator.higher_is_better,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        runlog.scalars(int(config["train"]["steps"]), {k: v for k, v in values.items()
                                                       if isinstance(v, (int, float))}, prefix=f"eval/{name}/")
    results = _write_results(run_dir, {"evaluation": metrics, "environment": environment()})
    if writer is not None and metrics:
        _log_hparams(writer, config, metrics)
    if failures:
        raise RunError(f"evaluator(s) {', '.join(failures)} failed; see {run_dir / 'log.txt'}. "
                       "The other results are in results.json.")
    return results


def _log_hparams(writer, config: Config, metrics: dict[str, dict[str, Any]]) -> None:
    """One HParams row per run: generator settings against each evaluator's primary metric."""
    hparams: dict[str, Any] = {"generator": config["run"]["generator"], "seed": config["seed"],
                               "train.steps": config["train"]["steps"],
                               "n_train_patients": str(config["split"]["n_train_patients"])}
    for key, value in config["generator"].items():
        hparams[f"generator.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    final = {}
    for name, m in metrics.items():
        primary = m.get("primary")
        if primary and primary in m.get("values", {}):
            final[f"hparam/{name}.{primary}"] = float(m["values"][primary])
    if final:
        writer.add_hparams(hparams, final, run_name=".")


def _write_results(run_dir: Path, update: dict[str, Any]) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(results.get(key), dict):
            results[key].update(value)
        else:
            results[key] = value
    results["run"] = Path(run_dir).name
    tmp = path.with_suffix(".json.tmp")
    # Strict JSON: NaN/inf (an arm switched off, an undefined interval) become null.
    tmp.write_text(json.dumps(_finite(results), indent=2, default=_json_default, allow_nan=False))
    tmp.replace(path)
    return results


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def environment() -> dict[str, Any]:
    return {"ganseg": toolkit.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def evaluate_run(run_dir: str | Path, evaluators: list[str] | None = None, overrides: tuple[str, ...] = (),
                 quiet: bool = False) -> dict[str, Any]:
    """Re-score an existing run's synthetic set with its saved config and split."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, overrides)
    synthetic_path = run_dir / SYNTHETIC
    if not synthetic_path.is_file():
        raise RunError(f"{run_dir} has no synthetic set ({synthetic_path}); finish the run first "
                       f"(python cli.py run --resume --name {run_dir.name})")
    names = config["run"]["evaluators"] if evaluators is None else evaluators
    built = {n: build_evaluator(config, n) for n in names}
    device = resolve_device(config["train"]["device"])
    set_threads(config["train"]["threads"])
    prepared = prepare_data(config, run_dir)
    synthetic = SliceSet.load(synthetic_path)
    writer = _writer(run_dir)
    runlog = RunLog(run_dir, writer, quiet=quiet)
    try:
        return evaluate_prepared(config, run_dir, prepared, synthetic, device, runlog, writer, built)
    finally:
        runlog.close()
        writer.close()


def summary_table(results: dict[str, Any]) -> str:
    """A plain-text table of each evaluator's declared metrics (all are in results.json), primary marked."""
    rows = []
    for name, m in results.get("evaluation", {}).items():
        if "error" in m:
            rows.append((name, "ERROR", m["error"]))
            continue
        for key in m.get("declared") or m["values"]:
            value = m["values"].get(key)
            mark = " *" if key == m["primary"] else ""
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            rows.append((name, key + mark, shown))
    if not rows:
        return "(no evaluation results)"
    widths = [max(len(r[i]) for r in rows + [("evaluator", "metric", "value")]) for i in range(3)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("evaluator", "metric", "value"), widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines) + "\n(* primary metric)"

