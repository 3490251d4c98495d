"""Run orchestration: data -> split -> train -> sample -> evaluate, through files in a run directory.

Each stage reads what the previous one wrote (``config.yaml``, ``split.json``,
``checkpoints/last.pt``, ``synthetic/synthetic.npz``; see ``toolkit.rundir``),
so any stage can be re-run alone: ``evaluate_run`` re-scores an existing
run's synthetic set. The core knows no concrete plugin: generators and
evaluators come from the registry by the names the config gives.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import toolkit
from toolkit import data as datalib
from toolkit.config import Config, plugin_kwargs, resolve
from toolkit.data.inspect import SMALL_GLAND_SHARE
from toolkit.data.masks import build_mask_source
from toolkit.data.slices import COND_DIM, SliceSet
from toolkit.plugin import EvalContext, Evaluator, Generator, TrainContext
from toolkit.registry import EVALUATORS, GENERATORS
from toolkit.report import describe_set, environment, log_evaluation, summary_table  # noqa: F401  (summary_table: API)
from toolkit.rundir import RunDir, RunError, default_run_name
from toolkit.runtime import Runtime
from toolkit.seg.baseline import BaselineStore
from toolkit.train.distributed import setup_runtime
from toolkit.train.loop import checkpoint_path, load_generator_state, resume_state, train_generator
from toolkit.train.runlog import RunLog
from toolkit.train.sampling import make_sampler, sample_set
from toolkit.train.seeding import seed_everything
from toolkit.types import DataSpec

__all__ = ["RunError", "evaluate_run", "load_run_config", "run_experiment", "summary_table"]


@dataclass
class PreparedData:
    """The real data of one run, split by patient."""

    train: SliceSet  # training slices after slice selection (what the generator sees)
    val: SliceSet  # every slice of the validation patients
    test: SliceSet  # every slice of the test patients
    split: dict[str, list[str]]
    fingerprint: str
    extra: SliceSet | None = None  # pool patients outside every split (the extra_real control), slice-selected
    report: dict[str, Any] = dataclasses.field(default_factory=dict)  # mask labels found and used, skipped patients


def load_run_config(run_dir: Path, overrides: tuple[str, ...] = ()) -> Config:
    """The config a run was made with, plus optional ``--set`` overrides."""
    run = RunDir.existing(run_dir, purpose="this command")
    return resolve(profile=None, config_files=[run.config], overrides=overrides)


# Stages ------------------------------------------------------------------------------------


def prepare_data(config: Config, run: RunDir | None = None) -> PreparedData:
    """Load slices, split by patient (or reuse the run's saved split), select training slices."""
    report: dict[str, Any] = {}
    slices, fingerprint = datalib.load_dataset(config.data, datalib.cache_dir(), report=report)
    split = None if run is None else run.read_split()
    if split is not None:
        missing = sorted(set(sum(split.values(), [])) - set(slices.patients()))
        if missing:
            raise RunError(f"{run.split} names patients the data no longer has: {missing[:5]}")
    else:
        split = datalib.split_patients(slices.patients(), config.split)
        if run is not None:
            run.write_split(config["split"], split)
    # Slice selection belongs to the data split, so generator seeds share the same training slices.
    train = datalib.select_slices(slices.of_patients(split["train"]), config.data, config.split.seed)
    unused = split.get("unused", [])
    extra = datalib.select_slices(slices.of_patients(unused), config.data, config.split.seed) if unused else None
    return PreparedData(train, slices.of_patients(split["val"]), slices.of_patients(split["test"]),
                        split, fingerprint, extra, report)


def build_generator(config: Config, device: torch.device) -> Generator:
    """The configured generator on ``device``, its initial weights following the experiment seed."""
    seed_everything(config.seed)
    cls = GENERATORS[config.run.generator]
    spec = DataSpec(image_size=config.data.image_size, cond_dim=COND_DIM)
    return cls(spec, device=device, **plugin_kwargs(cls, config["generator"], tiny=config.run.tiny))


def build_evaluators(config: Config, names: list[str] | None = None) -> dict[str, Evaluator]:
    """The evaluators named in ``run.evaluators`` (or ``names``), tiny settings under run.tiny."""
    built = {}
    for name in config.run.evaluators if names is None else names:
        cls = EVALUATORS[name]
        built[name] = cls(**plugin_kwargs(cls, config["evaluators"].get(name, {}), tiny=config.run.tiny))
    return built


def baseline_store(config: Config, prepared: PreparedData, device: torch.device) -> BaselineStore:
    return BaselineStore(prepared.train, prepared.val, prepared.fingerprint, config.seg, device,
                         datalib.cache_dir() / "eval")


def train_context(config: Config, prepared: PreparedData, gen: Generator, store: BaselineStore) -> TrainContext:
    """What the generator gets from the core: training slices, its mask source, the frozen segmenter."""
    source = None
    if gen.needs_masks:
        source = build_mask_source(config.masks.source, prepared.train, **config.masks.deformation())
    return TrainContext(train=prepared.train, mask_source=source, segmenter=lambda: store.model(0))


def clean_masks(synthetic: SliceSet, mode: str) -> dict[str, int]:
    """Apply ``run.mask_postprocess`` in place (masks and the area entry of their condition vectors)."""
    if mode == "none":
        return {}
    from toolkit.data.maskshape import postprocess_masks

    cleaned = postprocess_masks(synthetic.masks, mode)
    changed = int((cleaned != synthetic.masks).reshape(len(cleaned), -1).any(axis=1).sum())
    synthetic.masks = cleaned
    synthetic.cond[:, 1] = cleaned.reshape(len(cleaned), -1).mean(axis=1)
    return {"changed": changed}


def _writer(run: RunDir, purge_step: int | None = None):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run.path), purge_step=purge_step)


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

    ``resume`` continues a run from its last checkpoint and skips nothing it
    has not finished; its config changes (``--set``) are written only once the
    checkpoint has loaded.
    """
    t = config.train
    runtime, dist_info = setup_runtime(t.device, t.precision, t.channels_last, t.threads)
    # Build: evaluators and the seeded generator first, so a bad setting fails before
    # a run directory exists or any data is loaded.
    evaluators = build_evaluators(config)
    gen = build_generator(config, runtime.device)
    name = name or default_run_name(config.run.generator)
    if resume:
        run = RunDir.existing(Path(out) / name)
    elif dist_info.is_main:
        run = RunDir.create(out, name, force=force)
    else:
        run = RunDir(Path(out) / name)
    if dist_info.enabled:
        torch.distributed.barrier()
    state = resume_state(run.path, runtime.device) if resume else None
    if state is not None:  # before any write: a checkpoint these settings cannot load leaves the run as it was
        load_generator_state(gen, state, checkpoint_path(run.path))
    if dist_info.is_main:
        run.write_config(config.to_yaml())  # on --resume: records the --set overrides, now that the checkpoint loaded
    start = int(state["step"]) if state else 0
    writer = _writer(run, purge_step=start or None) if dist_info.is_main else None
    runlog = RunLog(run.path, writer, quiet=quiet or not dist_info.is_main)
    runlog.info(f"ganseg {toolkit.__version__}: run {run} ({config.run.generator}, device {runtime.device}, "
                f"{runtime.threads} threads, precision {runtime.amp_dtype or 'fp32'}, "
                f"{dist_info.world_size} process(es))")

    try:
        # Data: real slices split by patient; the generator sees training patients only.
        try:
            prepared = prepare_data(config, run)
        except Exception:
            if not resume and dist_info.is_main:
                runlog.close()
                writer.close()
                run.remove()  # bad data: the run never started, so leave nothing to collide with the next try
            raise
        test_note = " (every patient outside validation and the training pool)" \
            if config.split.test_patients == "rest" else ""
        runlog.info(f"data: {len(prepared.train)} training slices from {len(prepared.split['train'])} patients, "
                    f"{len(prepared.split['val'])} val / {len(prepared.split['test'])} test patients{test_note}, "
                    f"{len(prepared.split.get('unused', []))} pool patients outside every split "
                    f"(fingerprint {prepared.fingerprint[:12]})")
        gland = prepared.train.has_gland()
        prepared.report["gland_share"] = round(float(prepared.train.masks[gland].mean()), 4) if gland.any() else 0.0
        if prepared.report["gland_share"] < SMALL_GLAND_SHARE:
            runlog.info(f"hint: the gland covers {100 * prepared.report['gland_share']:.1f}% of a training slice at "
                        f"data.crop_fraction={config.data.crop_fraction} ({config.data.image_size} px); real pelvic "
                        "scans usually need a centre crop: `python cli.py data inspect --data DIR` suggests one "
                        "that keeps every gland (e.g. --set data.crop_fraction=0.65)")
        labels = prepared.report.get("labels", {})
        if len(labels.get("found", [])) > 1 or labels.get("setting") not in (None, "nonzero"):
            runlog.info(f"mask labels found {labels['found']}; counted as gland: {labels['gland']} "
                        f"(data.labels: {labels['setting']})")

        # Train: the generator gets its context, then the loop runs (resuming from the state read above).
        store = baseline_store(config, prepared, runtime.device)
        gen.setup(train_context(config, prepared, gen, store))
        sampler = make_sampler(gen, prepared.train)
        summary = train_generator(gen, prepared.train, t, run.path, runlog, sampler, seed=config.seed, state=state,
                                  dist_info=dist_info, progress=progress and not quiet, runtime=runtime)
        runlog.info(f"trained {summary['trained_steps']} steps (to step {summary['steps']}) in {summary['seconds']} s")
        if not dist_info.is_main:
            return run.path

        # Sample: the synthetic set, ratio x the real training slices, saved as arrays and a grid.
        n = max(1, round(config.run.synthetic_ratio * len(prepared.train)))
        t0 = time.perf_counter()
        synthetic = sample_set(sampler, n, seed=config.seed + 1, spacing=prepared.train.median_spacing())
        seconds = time.perf_counter() - t0
        postprocess = clean_masks(synthetic, config.run.mask_postprocess)
        if postprocess:
            runlog.info(f"mask post-processing ({config.run.mask_postprocess}): changed {postprocess['changed']} "
                        f"of {n} synthetic masks")
        run.save_synthetic(synthetic)
        runlog.info(f"sampled {n} synthetic pairs in {seconds:.1f} s -> {run.synthetic}")
        run.merge_results({"train": summary,
                           "synthetic": {**describe_set(synthetic), "seconds_per_100": round(100 * seconds / n, 3),
                                         "mask_postprocess": {"mode": config.run.mask_postprocess, **postprocess}},
                           "data": {"fingerprint": prepared.fingerprint, "train_slices": len(prepared.train),
                                    **{f"{k}_patients": len(v) for k, v in prepared.split.items()},
                                    **prepared.report}})

        # Evaluate: every configured evaluator, results merged into results.json.
        evaluate_prepared(config, run, prepared, synthetic, runtime, runlog, writer, evaluators, store)
    finally:
        runlog.close()
        if writer is not None:
            writer.close()
    return run.path


def evaluate_prepared(
    config: Config,
    run: RunDir,
    prepared: PreparedData,
    synthetic: SliceSet,
    runtime: Runtime,
    runlog: RunLog,
    writer=None,
    evaluators: dict[str, Evaluator] | None = None,
    store: BaselineStore | None = None,
) -> dict[str, Any]:
    """Run evaluators (default: ``run.evaluators``), write ``results.json`` and TensorBoard at the final step."""
    evaluators = build_evaluators(config) if evaluators is None else evaluators
    ctx = EvalContext(
        train=prepared.train, val=prepared.val, test=prepared.test, synthetic=synthetic, device=runtime.device,
        run_dir=run.path, cache_dir=datalib.cache_dir() / "eval", data_fingerprint=prepared.fingerprint,
        seg=config.seg, baselines=store or baseline_store(config, prepared, runtime.device), extra=prepared.extra,
        seed=config.seed,
        writer=writer, step=config.train.steps,
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
        metrics[name] = {"values": values, "declared": list(evaluator.metrics), "primary": evaluator.primary,
                         "higher_is_better": evaluator.higher_is_better, "seconds": round(time.perf_counter() - t0, 2)}
    results = run.merge_results({"evaluation": metrics, "environment": environment(),
                                 "settings": {"seg": dataclasses.asdict(config.seg)}})
    log_evaluation(runlog, writer, config, results, step=config.train.steps)
    if failures:
        raise RunError(f"evaluator(s) {', '.join(failures)} failed; see {run.path / 'log.txt'}. "
                       "The other results are in results.json.")
    return results


def evaluate_run(run_dir: str | Path, evaluators: list[str] | None = None, overrides: tuple[str, ...] = (),
                 quiet: bool = False) -> dict[str, Any]:
    """Re-score an existing run's synthetic set with its saved config and split."""
    run = RunDir.existing(run_dir, purpose="evaluate")
    config = load_run_config(run.path, overrides)
    synthetic = run.load_synthetic()
    built = build_evaluators(config, evaluators)
    t = config.train
    runtime, _ = setup_runtime(t.device, t.precision, t.channels_last, t.threads)
    prepared = prepare_data(config, run)
    writer = _writer(run)
    runlog = RunLog(run.path, writer, quiet=quiet)
    try:
        return evaluate_prepared(config, run, prepared, synthetic, runtime, runlog, writer, built)
    finally:
        runlog.close()
        writer.close()
