"""Base classes of the two plugin kinds: generators and evaluators.

A plugin is one class in one file, registered by name with
``toolkit.registry.GENERATORS.register`` or ``EVALUATORS.register``. Its
constructor's keyword arguments are its config schema: the YAML section of the
same name is validated against that signature before any work starts.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from toolkit.schema import CORE_ARGS  # noqa: F401 - part of the contract a plugin author reads
from toolkit.types import Batch, DataSpec

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from toolkit.data.masks import MaskSource
    from toolkit.data.slices import SliceSet
    from toolkit.seg.baseline import BaselineStore
    from toolkit.settings import SegSettings


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
    """What the core hands a generator before it trains or samples (``Generator.setup``).

    Attributes:
        train: the real training slices (never validation or test patients).
        mask_source: where masks come from for a mask-to-image generator (the
            ``masks`` config section); None for generators that make their own.
        segmenter: a callable returning the frozen real-data baseline U-Net
            (seed 0, from the baseline cache: trained on the training patients,
            its best state chosen on the validation patients' Dice; never test
            patients), built only when called; None where no segmenter is set up.
    """

    train: SliceSet
    mask_source: MaskSource | None = None
    segmenter: Callable[[], torch.nn.Module] | None = None


class Generator(abc.ABC):
    """A generative model of (image, mask) pairs.

    The generator owns its networks, optimizers, losses and EMA; the core owns
    the loop (data, device, logging, checkpoints). Subclasses take ``spec`` and
    ``device`` first, then keyword-only config arguments with defaults.

    Class attributes:
        needs_masks: True for mask-to-image models: the core passes ``masks``
            (and their ``cond``) to :meth:`sample`, drawn from the mask source
            it hands over in :meth:`setup`; ``sample`` must return those masks.
        conditional: True when the model uses ``Batch.cond``.
        tiny: config overrides that make the model small and fast, for tests
            and the smoke profile.
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
        """Receive what the core provides before training or sampling (called once).

        The default keeps the mask source. Override (and call ``super().setup``)
        to use more, e.g. ``ctx.segmenter()`` for a segmentation-consistency loss.
        """
        self.mask_source = ctx.mask_source

    def log_visuals(self, writer: SummaryWriter, step: int) -> None:
        """Write generator-specific TensorBoard images or scalars (called at each sample grid).

        The loop already logs a real-vs-synthetic grid and mask-area histograms;
        override to add e.g. several renderings per mask or grids by condition.
        Runs in eval mode under ``torch.no_grad``.
        """
        return None

    @abc.abstractmethod
    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """Run one optimisation step (a GAN does its D and G updates here).

        Returns:
            The losses to log, as plain floats.
        """

    @abc.abstractmethod
    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Draw ``n`` synthetic pairs on the CPU.

        Images are float in [-1, 1], masks in {0, 1}; deterministic given
        ``generator``. Called under ``torch.no_grad``.
        """

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes, as the loop configured it."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _stateful(self) -> dict[str, Any]:
        """Attributes that carry state: modules, optimizers, schedulers, EMAs."""
        return {
            name: value
            for name, value in vars(self).items()
            if hasattr(value, "state_dict") and hasattr(value, "load_state_dict")
        }

    def modules(self) -> dict[str, torch.nn.Module]:
        """The generator's networks by attribute name, EMA copies included (as ``<name>.module``).

        The loop uses this for memory format, train/eval mode and the
        multi-process weight broadcast, so the network that samples is never missed.
        """
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, torch.nn.Module):
                out[name] = value
            elif isinstance(getattr(value, "module", None), torch.nn.Module) and hasattr(value, "state_dict"):
                out[f"{name}.module"] = value.module  # an EMA (toolkit.nn.ema.EMA) or the like
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The generator's optimizers, by attribute name."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit.

        The default collects every attribute that has ``state_dict`` (networks,
        optimizers, schedulers, EMA). Override to add plain values.
        """
        return {name: obj.state_dict() for name, obj in self._stateful().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
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
    segmenter lives in ``ctx.baselines``).
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


@dataclass
class EvalContext:
    """What an evaluator gets to look at.

    Attributes:
        train / val / test: real slices of each split (test holds every slice of
            each test patient, in order, so volumes can be stacked back).
        synthetic: the synthetic set being judged (patient ids are "synthetic").
        device: where to compute.
        run_dir: the run directory; evaluators write tables and figures here.
        cache_dir: a folder for results worth keeping across runs (baselines,
            real-set feature statistics), keyed by the evaluator.
        data_fingerprint: a hash of the real data and its preprocessing.
        seg: the segmenter settings (the core ``seg`` section).
        baselines: the real-data baseline U-Nets by seed (cached), shared by
            ``dice_gain`` and the ``seg`` feature space.
        extra: real slices of patients outside every split (training-pool
            patients this regime does not use), or None: the ``extra_real``
            positive control, what more real data is worth.
        seed: the experiment seed.
        writer: TensorBoard writer, or None.
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
    seg: SegSettings = field(default_factory=lambda: _default_seg())
    baselines: BaselineStore | None = None
    extra: SliceSet | None = None
    seed: int = 0
    writer: SummaryWriter | None = None
    step: int = 0
    memo: Memo = field(default_factory=Memo)

    def __post_init__(self) -> None:
        if self.baselines is None:
            from toolkit.seg.baseline import BaselineStore

            self.baselines = BaselineStore(self.train, self.val, self.data_fingerprint, self.seg, self.device,
                                           self.cache_dir)


def _default_seg() -> SegSettings:
    from toolkit.settings import SegSettings

    return SegSettings()


class Evaluator(abc.ABC):
    """Scores a synthetic set against the real splits.

    Class attributes:
        metrics: the metric names :meth:`evaluate` returns (it may add more).
        primary: the metric that ranks generators.
        higher_is_better: direction of ``primary``.
        tiny: config overrides for tests and the smoke profile.
    """

    metrics: ClassVar[tuple[str, ...]] = ()
    primary: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    tiny: ClassVar[dict[str, Any]] = {}

    @abc.abstractmethod
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        """Compute the metrics; write any tables or figures under ``ctx.run_dir``."""
