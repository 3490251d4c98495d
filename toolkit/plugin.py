"""The plugin contract: everything a generator or evaluator author has to know is stated here.

The rules live in the docstrings of this module (:class:`Generator`, :class:`TrainContext`,
:class:`Evaluator`, :class:`EvalContext`, :class:`Baselines`, :class:`Memo`); the core enforces them
(``toolkit.experiment``, ``toolkit.train.loop``, ``toolkit.train.sampling``) and
``tests/test_contract.py`` checks every registered plugin against them. ``docs/plugins.md`` is a
walk-through that points here.

Registration. A plugin is one class in one file, registered with
``@toolkit.registry.GENERATORS.register(name)`` or ``EVALUATORS.register(name)``: a non-empty lowercase
name, equal to the file name by convention; a name registered twice is an error.

Configuration. The constructor's keyword arguments are the plugin's config schema. The YAML section of
the same name (``generator:``, ``evaluators.<name>:``) and ``--set`` overrides are checked against the
signature before any work starts: an unknown key, a value of the wrong type (``int`` is accepted for
``float``; ``Optional``, ``Literal``, ``list[...]``/``tuple[...]`` are understood) or outside an
``Annotated[..., Range(...)]`` range (``toolkit.schema``: ``Range`` and the aliases ``PositiveInt``,
``NonNegativeInt``, ``PositiveFloat``, ``NonNegativeFloat``, ``UnitInterval``) is an error naming the
key, where it came from and what is allowed. Give every setting a type hint, a default and a short
comment with its meaning and units. The arguments the core passes itself, ``spec`` and ``device``
(``toolkit.schema.CORE_ARGS``), are not config keys. Values arrive as YAML gives them: a ``tuple[...]``
setting receives a list. Raise ``ValueError`` in the constructor for combinations the hints cannot
express: plugins are built before the run directory exists, so a bad setting leaves nothing behind.

A generator's life in a run (``toolkit.experiment.run_experiment``):

1. ``seed_everything(config.seed)``, then ``cls(spec, device=..., **settings)``: initial weights and a
   ``RandomSource(seed=None)`` follow the experiment seed.
2. On ``--resume``: :meth:`Generator.load_state_dict` with the checkpoint (a checkpoint these settings
   cannot load stops the run before anything is written).
3. :meth:`Generator.setup` with a :class:`TrainContext`, once.
4. The training loop (``toolkit.train.loop.train_generator``): on ``--resume`` it loads the checkpoint
   again (after ``setup``) and restores the RNG states, then calls :meth:`Generator.train_step` for each
   step up to ``train.steps`` (or ``train.max_seconds``); every ``train.sample_every`` steps and after the
   last it draws a 32-pair grid through :meth:`Generator.sample` and calls :meth:`Generator.log_visuals`;
   it checkpoints :meth:`Generator.state_dict` every ``train.checkpoint_every`` steps.
5. The synthetic set: ``run.synthetic_ratio`` x the training slices, drawn through :meth:`Generator.sample`
   in chunks of at most 256 pairs, all from one ``torch.Generator`` seeded ``config.seed + 1``.

An evaluator is built with its settings only (no ``spec`` or ``device``: :class:`EvalContext` has the
device) and scores the saved synthetic set, in the run or later alone (``evaluate --evaluators NAME``).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from toolkit.settings import SegSettings
from toolkit.types import Batch, DataSpec

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from toolkit.data.masks import MaskSource
    from toolkit.data.slices import SliceSet
    from toolkit.seg.batched import Job
    from toolkit.seg.train import TrainResult


def plugin_name(plugin: object) -> str:
    """The name a plugin is registered under (its class name if it was never registered), for messages."""
    return getattr(type(plugin), "registry_name", type(plugin).__name__)


class PluginCallError(RuntimeError):
    """A plugin's own code raised inside a call the core made (``train_step``, ``sample``).

    The message is one line naming the plugin, the call and the step; the plugin's exception is
    ``__cause__``, and the CLI prints its traceback under that line, because the author needs it.
    """


@dataclass
class TrainContext:
    """What the core hands a generator in :meth:`Generator.setup`, once, before it trains or samples.

    Attributes:
        train: the real training slices after slice selection (``data.slices``): exactly the slices the
            loop trains on, never a validation or test patient. ``train.cond`` holds their condition
            vectors [N, ``spec.cond_dim``].
        mask_source: for a generator whose ``needs_masks`` is True (read on the instance): the mask
            source the ``masks:`` section chose (``deformed_real``, ``real`` or ``run:<dir>``), whose
            ``draw(n, generator)`` returns CPU masks float [n, 1, H, W] in {0, 1} and their conditions
            [n, cond_dim]. None for other generators.
        segmenter: a callable returning the frozen real-data baseline U-Net (seed 0, from the baseline
            cache: trained on the training patients, its best state chosen on the validation patients'
            Dice, never on test patients), on the run's device, in eval mode. The first call loads or
            trains it (minutes on a cold cache), later calls return the same network: the one the
            evaluators use, so never train or change it (``copy.deepcopy`` it first). None where no
            segmenter is set up (tests, benchmarks).
    """

    train: SliceSet
    mask_source: MaskSource | None = None
    segmenter: Callable[[], torch.nn.Module] | None = None


class Generator(abc.ABC):
    """A generative model of (image, mask) pairs.

    The generator owns its networks, optimizers, losses, EMA copies and training noise; the core owns
    the loop (data, devices, seeding, logging, sample grids, checkpoints, resume, multi-process training).

    Subclasses take ``spec`` and ``device`` first, then keyword-only settings with defaults (their config
    schema, see the module docstring), call ``super().__init__(spec, device)`` and build everything on
    ``self.device`` from ``spec``: image channels ``spec.channels``, side ``spec.image_size``, condition
    length ``spec.cond_dim`` (set by the core from the data; never hard-code it).

    Class attributes:
        needs_masks: True for mask-to-image models. The core then builds the ``masks:`` section's mask
            source and hands it over in :meth:`setup` (``TrainContext.mask_source``), and its sampler
            draws ``(masks, cond)`` from it (from ``self.mask_source``, else the real training masks)
            and passes both to :meth:`sample`, which must return exactly those masks. The core reads
            ``gen.needs_masks`` on the instance after construction, so a constructor may set it per
            instance (``ddpm`` does for ``mode=mask_conditioned``); set it in ``__init__`` and never
            change it afterwards.
        conditional: True when the model uses condition vectors. It changes only what the core's sampler
            passes as ``cond`` to :meth:`sample` when ``needs_masks`` is False: the conditions of real
            training slices drawn uniformly with replacement (True) or None (False). With ``needs_masks``
            the sampler always passes the drawn masks' own conditions. Training batches carry ``cond``
            whatever this says. Read on the instance, like ``needs_masks``.
        tiny: constructor keyword arguments that make the model small and fast (well under a second
            per training step on a CPU at 32 px): the contract test builds ``cls(spec, **cls.tiny)``, and
            ``run.tiny: true`` (the smoke profile) builds it from ``tiny`` updated by the YAML section,
            so a key there or a ``--set`` wins. The config validator does not check ``tiny``: every key
            must be a constructor keyword (a wrong one fails when the class is built).

    Attributes set by the base class and the core:
        spec: the :class:`~toolkit.types.DataSpec`.
        device: ``torch.device`` the core chose (``train.device``); every batch arrives there.
        amp_dtype: the autocast dtype the loop set from ``train.precision`` (None: fp32), before the
            first step; see :meth:`autocast`.
        mask_source: the mask source :meth:`setup` kept (None until then, and for most generators).

    Randomness: draw every random number of training (latents, timesteps, augmentation, dropout masks of
    your own) from a :class:`toolkit.nn.rng.RandomSource` attribute. The loop restores the global
    python / numpy / torch RNG states on resume, so global draws resume too, but only in a single
    process, on the same device, and only while nothing else in the process draws from them in
    between. A ``RandomSource`` draws on the CPU (the same numbers on CPU, CUDA and MPS), is drawn by
    nothing else, and is saved in this generator's :meth:`state_dict`, so a resumed run draws exactly
    the noise of an uninterrupted one (``tests/test_contract.py`` checks the logged losses).
    :meth:`sample` draws from its ``generator`` argument instead, never from the training source.

    Under ``torchrun`` (several processes): the loop broadcasts every network in :meth:`modules` from
    rank 0 once, and hooks every optimizer in :meth:`optimizers` to average its parameters' gradients
    across ranks right before its ``step()`` (a parameter without a gradient contributes zeros). Each
    ``step()`` is therefore a collective: every rank must step the same optimizers in the same order,
    whatever its own batch holds. Only rank 0 logs, samples and checkpoints; BatchNorm statistics stay
    per rank; bit-for-bit resume holds for single-process runs only.
    """

    needs_masks: ClassVar[bool] = False
    conditional: ClassVar[bool] = False
    tiny: ClassVar[dict[str, Any]] = {}

    def __init__(self, spec: DataSpec, device: torch.device | str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        # Set by the training loop; generators wrap their forward passes in self.autocast().
        self.amp_dtype: torch.dtype | None = None
        # Set by setup(): where a mask-to-image generator draws masks when sample() gets none.
        self.mask_source: MaskSource | None = None

    def setup(self, ctx: TrainContext) -> None:
        """Receive what the core provides (a :class:`TrainContext`), once, before the first step or sample.

        It is called after construction and, on ``--resume``, after a first :meth:`load_state_dict`;
        the loop then loads the checkpoint again, so on resume whatever :meth:`state_dict` holds comes
        from the checkpoint, not from ``setup``. The default keeps ``ctx.mask_source`` in
        ``self.mask_source``. Override it calling ``super().setup(ctx)`` to keep more, e.g. the
        training conditions ``ctx.train.cond`` (for :meth:`sample` without ``cond``) or
        ``ctx.segmenter()`` for a segmentation-consistency loss.
        """
        self.mask_source = ctx.mask_source

    def log_visuals(self, writer: SummaryWriter, step: int) -> None:
        """Write generator-specific TensorBoard images or scalars (called at each sample grid).

        The loop already logs a real-vs-synthetic grid and mask-area histograms;
        override to add e.g. several renderings per mask or grids by condition.
        Runs in eval mode under ``torch.no_grad``, on rank 0 only, between training steps: draw
        from a ``torch.Generator`` of your own, never from the training ``RandomSource``, so training
        does not depend on how often grids are drawn.
        """
        return None

    @abc.abstractmethod
    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """Run one optimisation step (a GAN does its D and G updates here).

        Args:
            batch: the step's rows of the real training slices, already on ``self.device`` (the loop
                moves the training set there once and indexes it), float32: ``image`` [B, C, H, W] in
                [-1, 1], ``mask`` [B, 1, H, W] in {0, 1}, ``cond`` [B, ``spec.cond_dim``] (never None
                from the core), in ``channels_last`` memory format when the runtime chose it. B is
                ``train.batch_size`` (per process under ``torchrun``). The rows are a pure function of
                (seed, step), so a resumed run sees the same batches; the tensors are indexed copies,
                so editing them in place touches only this batch.
            step: the 0-based index of this step; a resumed run continues from the checkpoint's step.

        Called with the networks in training mode (EMA copies stay in eval mode), with gradients
        enabled; wrap forward passes in ``with self.autocast():``.

        Returns:
            The losses to log, by name, each converted with ``float()`` (return plain floats, e.g.
            ``loss.item()``). The loop logs their mean over each ``train.log_every`` window as
            ``loss/<name>`` and stops the run (``TrainingDiverged``) if one is NaN or inf, keeping the
            last good checkpoint. An exception raised here stops the run as a ``PluginCallError``
            naming the generator and the step.
        """

    @abc.abstractmethod
    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Draw ``n`` synthetic pairs, as CPU tensors.

        The core calls it through its sampler (``toolkit.train.sampling.make_sampler``) under
        ``torch.no_grad`` with every network of :meth:`modules` in eval mode (their modes are restored
        afterwards), for the sample grids during training and for the synthetic set after it.

        Args:
            n: how many pairs.
            cond: CPU float32 [n, ``spec.cond_dim``]: what the sampler passes (see ``conditional`` and
                ``needs_masks`` in the class docstring), else None. Move it to ``self.device``. Given
                None, a model that uses conditions never invents them (zeros are no real slice's
                condition): draw them from the training conditions kept in :meth:`setup`, or raise.
            masks: for ``needs_masks`` models, CPU float32 [n, 1, H, W] in {0, 1} drawn from the mask
                source (the core always passes them); the output's masks must equal them exactly. Given
                None (a direct call), draw masks and their conditions from ``self.mask_source``.
            generator: a seeded CPU ``torch.Generator`` the core always passes: draw every random
                number of sampling from it (on the CPU, then move), so the output is a function of
                ``n``, ``cond``, ``masks``, the generator's state and the weights alone, on any device.
                A synthetic set is drawn in chunks of at most 256 that share one generator. Sampling
                never draws from the training ``RandomSource`` nor changes checkpointed state: grids
                are drawn between training steps, and training must not depend on how often. Given
                None (a direct call), any source will do.

        Returns:
            A :class:`~toolkit.types.Batch` of ``n`` pairs: ``image`` floating point [n, ``spec.channels``,
            H, W] at the data's size, finite, in [-1, 1]; ``mask`` [n, 1, H, W] holding only 0 and 1
            (threshold logits, e.g. ``(logits > 0).float()``); ``cond`` [n, ``spec.cond_dim``] finite
            (the conditions each pair was drawn for), or None (a synthetic set stores zeros then). The
            core checks every output where it receives it, before any evaluator sees it
            (``toolkit.train.sampling.check_sample``): a breach stops the run with a
            ``GeneratorContractError`` naming the generator and what was wrong, an exception raised
            here with a ``PluginCallError``; the checkpoint is kept either way. The core then casts
            image and mask to float32 on the CPU.
        """

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes, as the loop configured it (``amp_dtype``).

        ``train.precision: bf16`` (or ``auto`` where the hardware runs bf16 natively) sets ``amp_dtype``
        to ``torch.bfloat16``; fp32 leaves it None and this is a no-op. Compute losses in float32.
        """
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _stateful(self) -> dict[str, Any]:
        """Attributes that carry state: modules, optimizers, schedulers, EMAs, random sources."""
        return {
            name: value
            for name, value in vars(self).items()
            if hasattr(value, "state_dict") and hasattr(value, "load_state_dict")
        }

    def modules(self) -> dict[str, torch.nn.Module]:
        """The generator's networks by attribute name, EMA copies included (as ``<name>.module``).

        The loop uses this for memory format (``channels_last``), train/eval mode and the
        multi-process weight broadcast, so the network that samples is never missed. Only direct
        attributes count: keep several networks in an ``nn.ModuleList`` / ``nn.ModuleDict`` or a
        parent ``nn.Module``, never in a plain list or dict.
        """
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, torch.nn.Module):
                out[name] = value
            elif isinstance(getattr(value, "module", None), torch.nn.Module) and hasattr(value, "state_dict"):
                out[f"{name}.module"] = value.module  # an EMA (toolkit.nn.ema.EMA) or the like
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The generator's optimizers, by attribute name (direct attributes only).

        Under ``torchrun`` the loop averages each one's gradients across ranks before its ``step()``.
        """
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit: the ``generator`` entry of a checkpoint.

        A checkpoint (``checkpoints/last.pt``, written atomically by rank 0 every
        ``train.checkpoint_every`` steps, after the last step and when SIGINT / SIGTERM stops a run)
        holds this dict, the python / numpy / torch (CPU and CUDA) RNG states, the step, the open
        log window and the training seconds so far.

        The default holds ``obj.state_dict()`` of every direct attribute that has both ``state_dict``
        and ``load_state_dict``: networks (loss networks included), optimizers, learning-rate
        schedulers, EMAs (``toolkit.nn.ema.EMA``: averaged weights, update count, decay) and
        random sources (``RandomSource``). It misses plain values (counters, flags), tensors that are
        not a module's parameters or buffers, ``torch.Generator`` objects and anything inside a plain
        list, dict or tuple: override it (``state = super().state_dict()``, then add) and
        :meth:`load_state_dict` for those. Checkpoints are loaded with ``weights_only=True``: keep the
        state to tensors, numbers, strings, booleans, None, lists, tuples and dicts.
        """
        return {name: obj.state_dict() for name, obj in self._stateful().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; strict: the attributes must match the saved keys exactly.

        A mismatch (other settings build other networks) raises ``KeyError`` naming the missing and
        unexpected entries; the loop reports it as a ``CheckpointError`` naming the file. On resume it
        is called before :meth:`setup` and again after it.
        """
        stateful = self._stateful()
        missing = sorted(set(stateful) - set(state))
        unexpected = sorted(set(state) - set(stateful))
        if missing or unexpected:
            raise KeyError(
                f"{type(self).__name__} checkpoint does not match the model: "
                f"missing {missing}, unexpected {unexpected}"
            )
        for name, obj in stateful.items():
            obj.load_state_dict(state[name])

    def train(self, mode: bool = True) -> None:
        """Set the trained networks' mode; EMA copies always stay in eval mode."""
        for name, module in self.modules().items():
            module.train(mode and not name.endswith(".module"))

    def eval(self) -> None:
        self.train(False)


class Memo:
    """Values computed once per evaluation and reused by the evaluators that need the same thing.

    ``ctx.memo.get_or_compute(key, fn)``: e.g. real-set features of one
    feature space, shared by ``fd``, ``prdc`` and ``memorization``. Keys name
    what was computed, never a plugin; models are not passed around here (the
    segmenter lives in ``ctx.baselines``). It lives as long as one :class:`EvalContext`.
    """

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def clear(self) -> None:
        self._values.clear()


@runtime_checkable
class Baselines(Protocol):
    """The real-data baseline U-Nets by seed, as evaluators use them (``EvalContext.baselines``).

    The core passes a ``toolkit.seg.baseline.BaselineStore``: it keeps each seed's baseline in
    memory and on disk (``cache_dir/seg_baselines/``), keyed by everything that decides its weights,
    and trains the ones neither holds. One store serves the whole evaluation and the generator's
    ``TrainContext.segmenter``, so ``dice_gain``'s baseline arm and the ``seg`` feature space get the
    same network in any order. A stand-in (tests) needs only the methods its evaluator calls.
    """

    def get(self, seed: int = 0) -> tuple[TrainResult, bool]:
        """The baseline for ``seed`` (from memory or the cache, else trained now) and whether this call
        trained it."""
        ...

    def model(self, seed: int = 0) -> torch.nn.Module:
        """The baseline U-Net for ``seed`` in eval mode (``encode(x)`` gives bottleneck features).

        Shared by every evaluator and the generator: never train or change it.
        """
        ...

    def missing(self, seeds: list[int]) -> list[int]:
        """The seeds (in order, once each) whose baseline is neither in memory nor in the cache."""
        ...

    def job(self, seed: int) -> Job:
        """The training job of ``seed``'s baseline (real training slices only), to train together with
        other U-Nets (``toolkit.seg.batched.train_unets``)."""
        ...

    def add(self, seed: int, result: TrainResult) -> None:
        """Keep (and cache) a baseline trained elsewhere from :meth:`job` with the context's ``seg``
        settings."""
        ...


@dataclass
class EvalContext:
    """What an evaluator gets to look at: one per evaluation, shared by its evaluators.

    ``toolkit.experiment.evaluate_prepared`` builds it and runs the evaluators in ``run.evaluators``
    order on it (so they share ``memo`` and ``baselines``); every evaluator must also run alone
    (``evaluate --evaluators NAME``), so none relies on another having run first. Slice sets are
    ``toolkit.data.slices.SliceSet``: images float32 [N, H, W] in [-1, 1], masks uint8 [N, H, W] in
    {0, 1}, ``cond`` [N, cond_dim], patient ids, slice indices and spacing.

    Attributes:
        train / val / test: real slices of each split: ``train`` after slice selection (what the
            generator saw), ``val`` and ``test`` every slice of their patients (test in order per
            patient, so volumes can be stacked back). Never train on ``test``.
        synthetic: the synthetic set being judged (patient ids are "synthetic"), after
            ``run.mask_postprocess``.
        device: where to compute (``train.device``).
        run_dir: the run directory; evaluators write tables and figures here (e.g. under
            ``run_dir/<name>/``).
        cache_dir: a folder for results worth keeping across runs (baselines,
            real-set feature statistics), keyed by the evaluator.
        data_fingerprint: a hash of the real data and its preprocessing.
        baselines: the real-data baseline U-Nets by seed (a :class:`Baselines`), shared by
            ``dice_gain`` and the ``seg`` feature space. Required: the caller builds it (the core: a
            ``BaselineStore``) from this context's ``train``, ``val``, ``data_fingerprint``, ``seg``,
            ``device`` and ``cache_dir``, because ``dice_gain`` trains missing baselines with
            ``ctx.seg`` on ``ctx.device`` and hands them to ``baselines.add``.
        seg: the segmenter settings (the core ``seg`` section).
        extra: real slices of patients outside every split (training-pool
            patients this regime does not use), or None: the ``extra_real``
            positive control, what more real data is worth.
        seed: the experiment seed.
        writer: TensorBoard writer, or None. The core logs every returned number itself (as
            ``eval/<evaluator>/<metric>``): use the writer for images and figures only.
        step: the TensorBoard step to log at (the run's final training step).
        memo: values computed once per evaluation (see :class:`Memo`).
    """

    train: SliceSet
    val: SliceSet
    test: SliceSet
    synthetic: SliceSet
    device: torch.device
    run_dir: Path
    cache_dir: Path
    data_fingerprint: str
    baselines: Baselines
    seg: SegSettings = field(default_factory=SegSettings)
    extra: SliceSet | None = None
    seed: int = 0
    writer: SummaryWriter | None = None
    step: int = 0
    memo: Memo = field(default_factory=Memo)


class Evaluator(abc.ABC):
    """Scores a synthetic set against the real splits.

    Subclasses take keyword-only settings with defaults and nothing else: the ``evaluators.<name>``
    section is their config schema (see the module docstring).

    Class attributes:
        metrics: the metric names :meth:`evaluate` returns (it may add more). Where they depend on the
            settings (e.g. the feature space), set ``self.metrics`` in ``__init__``: the core and the
            contract test read the instance (``dice_gain`` does).
        primary: the metric that ranks generators; one of ``metrics``, finite on the contract test's
            tiny data.
        higher_is_better: direction of ``primary`` (a bool).
        tiny: constructor keyword arguments for tests and the smoke profile: the contract test builds
            ``cls(**cls.tiny)``; under ``run.tiny`` the YAML section wins over them.
    """

    metrics: ClassVar[tuple[str, ...]] = ()
    primary: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    tiny: ClassVar[dict[str, Any]] = {}

    @abc.abstractmethod
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        """Compute the metrics; write any tables or figures under ``ctx.run_dir``.

        Returns:
            Metric name -> number (int or float), every name in ``metrics`` included. The same data,
            settings and seed give the same declared values (the contract test evaluates twice, on
            fresh contexts and caches, and compares them exactly). The core writes them to
            ``results.json`` with ``metrics``, ``primary``, ``higher_is_better`` and the seconds taken,
            and logs them to TensorBoard at ``ctx.step``.

        An exception raised here is logged and recorded under the evaluator's name in
        ``results.json``; the other evaluators still run, then the evaluation fails with a
        ``RunError`` naming it.
        """
