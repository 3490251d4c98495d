"""The plugin contract, run for every registered generator and evaluator on tiny data.

A plugin is covered here the moment it is registered: no test of its own is
needed for the contract (timm's test_models idiom).
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from tests.conftest import TINY_SEG, make_slices
from toolkit.data.masks import DeformedMasks
from toolkit.data.slices import SliceSet
from toolkit.plugin import Baselines, EvalContext, TrainContext
from toolkit.registry import EVALUATORS, GENERATORS
from toolkit.seg.baseline import BaselineStore
from toolkit.settings import TrainSettings
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint
from toolkit.train.loop import resume_state, train_generator
from toolkit.train.runlog import RunLog
from toolkit.train.sampling import make_sampler
from toolkit.train.seeding import seed_everything
from toolkit.types import Batch, DataSpec

SIZE = 32


def build(name: str, data: SliceSet | None = None, **settings):
    """The generator with its tiny settings (and ``settings`` over them), set up as the core sets it up
    (deformed real masks)."""
    cls = GENERATORS.get(name)
    gen = cls(DataSpec(image_size=SIZE), device="cpu", **{**cls.tiny, **settings})
    data = make_slices(n_patients=3, slices_per_patient=6, size=SIZE) if data is None else data
    gen.setup(TrainContext(train=data, mask_source=DeformedMasks(data)))
    return gen


def sample(gen, n: int, seed: int, data: SliceSet) -> Batch:
    return make_sampler(gen, data)(n, torch.Generator().manual_seed(seed))


@pytest.fixture
def data() -> SliceSet:
    return make_slices(n_patients=3, slices_per_patient=6, size=SIZE)


@pytest.mark.parametrize("name", GENERATORS.names())
def test_generator_trains_and_samples(name, data):
    torch.manual_seed(0)
    gen = build(name)
    batch = data.to_batch(np.arange(8))
    for step in range(2):
        losses = gen.train_step(batch, step)
        assert losses and all(isinstance(k, str) for k in losses)
        assert all(math.isfinite(float(v)) for v in losses.values()), losses
    out = sample(gen, 5, seed=1, data=data)
    assert out.image.shape == (5, 1, SIZE, SIZE) and out.image.dtype == torch.float32
    assert out.mask.shape == (5, 1, SIZE, SIZE)
    assert out.image.min() >= -1 and out.image.max() <= 1
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    if out.cond is not None:
        assert out.cond.shape == (5, DataSpec().cond_dim)


@pytest.mark.parametrize("name", GENERATORS.names())
def test_generator_trains_and_samples_under_bf16_channels_last(name, data):
    # What the loop does for `train.precision: bf16` (or auto on AMX/CUDA) with channels_last on:
    # emulated on CPUs without native bf16 (slow, hence tiny). Late step numbers pass warm-up phases.
    torch.manual_seed(0)
    gen = build(name)
    gen.amp_dtype = torch.bfloat16
    for module in gen.modules().values():
        module.to(memory_format=torch.channels_last)
    batch = data.to_batch(np.arange(8))
    batch = Batch(batch.image.contiguous(memory_format=torch.channels_last),
                  batch.mask.contiguous(memory_format=torch.channels_last), batch.cond)
    for step in (0, 10_000):
        losses = gen.train_step(batch, step)
        assert all(math.isfinite(float(v)) for v in losses.values()), losses
    out = sample(gen, 3, seed=1, data=data)
    assert out.image.dtype == torch.float32 and set(out.mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", [n for n in GENERATORS.names() if GENERATORS.get(n).needs_masks])
def test_mask_to_image_generator_renders_the_given_masks(name, data):
    torch.manual_seed(0)
    gen = build(name, data)
    gen.train_step(data.to_batch(np.arange(8)), 0)
    masks = data.to_batch(np.arange(4, 10)).mask
    cond = data.to_batch(np.arange(4, 10)).cond
    gen.eval()
    with torch.no_grad():
        out = gen.sample(6, cond=cond, masks=masks, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.mask.cpu().float(), masks), "sample(masks=...) must return the masks it was given"
    assert out.image.shape == (6, 1, SIZE, SIZE)
    # Without masks it draws from the mask source it was handed in setup().
    with torch.no_grad():
        drawn = gen.sample(3, generator=torch.Generator().manual_seed(1))
    assert drawn.mask.shape == (3, 1, SIZE, SIZE) and set(drawn.mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", GENERATORS.names())
def test_generator_sampling_is_deterministic(name, data):
    torch.manual_seed(0)
    gen = build(name)
    gen.train_step(data.to_batch(np.arange(8)), 0)
    a, b = sample(gen, 4, 3, data), sample(gen, 4, 3, data)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    c = sample(gen, 4, 4, data)
    assert not torch.equal(a.image, c.image), "different seeds gave identical samples"


@pytest.mark.parametrize("name", GENERATORS.names())
def test_generator_state_round_trip(name, data, tmp_path):
    torch.manual_seed(0)
    original = build(name, data)
    batch = data.to_batch(np.arange(8))
    original.train_step(batch, 0)
    save_checkpoint({"generator": original.state_dict()}, tmp_path / "g.pt")
    restored = build(name, data)
    restored.load_state_dict(load_checkpoint(tmp_path / "g.pt")["generator"])  # weights_only=True
    a, b = sample(original, 4, 5, data), sample(restored, 4, 5, data)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    torch.manual_seed(1)
    next_original = original.train_step(batch, 1)
    torch.manual_seed(1)
    next_restored = restored.train_step(batch, 1)
    assert next_original == next_restored


def _train(name, data, run_dir, steps, interrupt_at=None, resume=False, **settings):
    seed_everything(3)  # as run_experiment does: seed, then build
    gen = build(name, data, **settings)
    if interrupt_at is not None:
        step_fn = gen.train_step

        def train_step(batch, step):
            if step == interrupt_at:
                raise KeyboardInterrupt  # what a kill looks like to the loop
            return step_fn(batch, step)

        gen.train_step = train_step
    cfg = TrainSettings(steps=steps, batch_size=4, log_every=1, sample_every=100, checkpoint_every=3)
    runlog = RunLog(run_dir, quiet=True)
    try:
        state = resume_state(run_dir) if resume else None
        return train_generator(gen, data, cfg, run_dir, runlog, make_sampler(gen, data), seed=3,
                               state=state, progress=False)
    finally:
        runlog.close()


def _losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", GENERATORS.names())
def test_killed_and_resumed_run_matches_uninterrupted(name, data, tmp_path):
    _train(name, data, tmp_path / "straight", steps=6)
    with pytest.raises(KeyboardInterrupt):
        _train(name, data, tmp_path / "killed", steps=6, interrupt_at=4)
    summary = _train(name, data, tmp_path / "killed", steps=6, resume=True)
    assert summary["resumed_from"] == 3
    strip = [{k: v for k, v in r.items() if k != "time"} for r in _losses(tmp_path / "straight")]
    resumed = [{k: v for k, v in r.items() if k != "time"} for r in _losses(tmp_path / "killed")]
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert resumed == strip


# Evaluators -------------------------------------------------------------------------------


def tiny_context(tmp_path: Path, writer=None) -> EvalContext:
    real = make_slices(n_patients=6, slices_per_patient=6, size=SIZE, seed=1)
    patients = real.patients()
    synthetic = make_slices(n_patients=2, slices_per_patient=6, size=SIZE, seed=2)
    synthetic = SliceSet(synthetic.images, synthetic.masks, synthetic.cond,
                         np.full(len(synthetic), "synthetic"), np.arange(len(synthetic)))
    train, val = real.of_patients(patients[:2]), real.of_patients(patients[2:4])
    device, cache = torch.device("cpu"), tmp_path / "cache"
    return EvalContext(
        train=train, val=val, test=real.of_patients(patients[4:]), synthetic=synthetic, device=device,
        run_dir=tmp_path, cache_dir=cache, data_fingerprint="contract-test",
        baselines=BaselineStore(train, val, "contract-test", TINY_SEG, device, cache), seg=TINY_SEG, seed=0,
        writer=writer,
    )


@pytest.mark.parametrize("name", EVALUATORS.names())
def test_evaluator_contract(name, tmp_path):
    cls = EVALUATORS.get(name)
    evaluator = cls(**cls.tiny)  # metric names may depend on settings (e.g. the feature space)
    assert evaluator.primary in evaluator.metrics, "the primary metric must be one of the declared metrics"
    assert isinstance(evaluator.higher_is_better, bool)
    writer = SummaryWriter(str(tmp_path / "tb"))
    try:
        first = evaluator.evaluate(tiny_context(tmp_path / "a", writer))
    finally:
        writer.close()
    missing = set(evaluator.metrics) - set(first)
    assert not missing, f"missing metrics {missing}"
    assert all(isinstance(v, (int, float)) for v in first.values()), first
    assert math.isfinite(first[evaluator.primary])
    again = cls(**cls.tiny).evaluate(tiny_context(tmp_path / "b"))
    declared = {k: first[k] for k in evaluator.metrics}
    assert {k: again[k] for k in evaluator.metrics} == declared, "same data and seed must give the same metrics"


def test_the_baseline_store_is_what_evaluators_expect_of_ctx_baselines(tmp_path):
    """BaselineStore has every method of the Baselines protocol, with the protocol's parameters."""
    data = make_slices(n_patients=2, slices_per_patient=2, size=SIZE)
    store = BaselineStore(data, data, "protocol", TINY_SEG, "cpu", tmp_path)
    assert isinstance(store, Baselines)
    for name in ("get", "model", "missing", "job", "add"):
        expected = inspect.signature(getattr(Baselines, name))
        assert inspect.signature(getattr(BaselineStore, name)) == expected, name
