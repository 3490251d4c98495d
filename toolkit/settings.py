"""Typed settings of the core config sections, built once by ``toolkit.config.resolve``.

Each section is a frozen dataclass whose fields are its keys: type hints (with
``Annotated`` ranges, see ``toolkit.schema``) are the schema, checked by the
same machinery as plugin constructors; ``configs/default.yaml`` holds the
same defaults with comments (a test keeps the two equal). Code reads
``config.train.steps``, never ``config["train"].get("steps", 2000)``, and a
benchmark cell is ``config.replace({"split.n_train_patients": 2})``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from toolkit.schema import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    check_value,
)

Precision = Literal["auto", "fp32", "bf16"]


class Section:
    """Base of the settings classes: every field is checked against its hint, however the object is made."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for key, (hint, default) in section_fields(type(self)).items():
            check_value(getattr(self, key), hint, f"{self.section}.{key}", "settings", default)


@dataclass(frozen=True)
class RunSettings(Section):
    section: ClassVar[str] = "run"
    generator: str = "vaegan"  # registered generator name (python cli.py list)
    evaluators: list[str] = field(default_factory=lambda: ["dice_gain", "fd", "prdc", "diversity", "memorization"])
    synthetic_ratio: PositiveFloat = 1.0  # synthetic slices per real training slice
    # Clean the synthetic masks after sampling: none, or largest_component (largest component + holes
    # filled); off by default so the model's own masks are what is measured. Logged and in results.json.
    mask_postprocess: Literal["none", "largest_component"] = "none"
    tiny: bool = False  # build plugins with their `tiny` settings (tests, smoke profile)


@dataclass(frozen=True)
class DataSettings(Section):
    section: ClassVar[str] = "data"
    path: str | None = None  # folder of real volumes; None: the embedded phantom
    layout: Literal["auto", "msd", "folders", "promise12", "pairs"] = "auto"
    image_size: Literal[32, 64, 128, 256] = 64  # slice side after resizing (32 for tests)
    crop_fraction: Annotated[float, Range(min=0, max=1, min_open=True)] = 1.0  # centre crop kept before resizing
    percentiles: tuple[Annotated[float, Range(0, 100)], Annotated[float, Range(0, 100)]] = (0.5, 99.5)
    slices: Literal["all", "gland"] = "gland"  # gland: the gland's z-extent plus a margin
    slice_margin: NonNegativeInt = 2  # slices kept beyond the gland's extent on each side
    empty_fraction: Annotated[float, Range(min=0, max=1, max_open=True)] = 0.1  # max share of kept slices without gland
    msd_channel: NonNegativeInt = 0  # channel of 4D msd images (0 = T2)
    image_name: str | None = None  # folders layout: image file name; None: known defaults
    mask_name: str | None = None  # folders layout: mask file name; None: known defaults
    empty_mask: Literal["error", "skip"] = "error"  # a volume whose mask is empty
    # Which mask values are gland: nonzero (every label > 0, with a warning listing them when there are
    # several, e.g. zonal PZ/TZ masks), binary (anything but 0/1 is an error), or a list such as [1, 2].
    labels: Literal["nonzero", "binary"] | list[Annotated[int, Range(min=1)]] = "nonzero"
    cache: bool = True  # cache preprocessed slices on disk
    phantom_patients: PositiveInt = 32  # embedded phantom: number of patients
    phantom_seed: int = 0  # embedded phantom: anatomy seed

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.percentiles[0] < self.percentiles[1]:
            raise ConfigError(f"config key 'data.percentiles' must be two numbers low < high, got {list(self.percentiles)}")


@dataclass(frozen=True)
class SplitSettings(Section):
    section: ClassVar[str] = "split"
    seed: int = 0  # seed of the patient-level split
    val_patients: PositiveInt = 4
    # A number, or "rest": every patient outside validation and the training pool (test patients cost
    # only inference, and more of them narrow the CI); "rest" needs train_pool.
    test_patients: PositiveInt | Literal["rest"] = 8
    # Patients reserved for training (with a number of test patients: at most this many); the first
    # n_train_patients of them train, so val and test stay the same for every n_train_patients <= train_pool.
    # Pool patients that do not train are the extra_real control's. None: every patient outside val and test.
    train_pool: PositiveInt | None = None
    n_train_patients: PositiveInt | None = None  # None: the whole pool; fewer: the low-data regime
    # Which n_train_patients of the pool train: 0 = its first ones (nested regimes); d > 0 = a seeded random
    # subset (another draw of a small training set: which patients train moves Dice more than seeds do).
    draw: NonNegativeInt = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_patients == "rest" and self.train_pool is None:
            raise ConfigError("split.test_patients: rest needs split.train_pool (the patients reserved for "
                              "training), so that val and test stay fixed when n_train_patients changes")
        if self.train_pool is not None and self.n_train_patients is not None and \
                self.n_train_patients > self.train_pool:
            raise ConfigError(f"split.n_train_patients={self.n_train_patients} is larger than "
                              f"split.train_pool={self.train_pool}; raise train_pool or lower n_train_patients")


#: The mask sources ``masks.source`` may name (``toolkit.data.masks`` builds them).
SOURCES = ("deformed_real", "real", "run:<dir>")


def check_source(source: str) -> None:
    """Fail early on a ``masks.source`` value that names no source."""
    if source in ("deformed_real", "real") or (source.startswith("run:") and len(source) > 4):
        return
    raise ValueError(f"masks.source={source!r}: expected one of {', '.join(SOURCES)}")


@dataclass(frozen=True)
class MaskSettings(Section):
    section: ClassVar[str] = "masks"
    source: str = "deformed_real"  # deformed_real | real | run:<dir>
    rotate_deg: NonNegativeFloat = 15.0
    scale: Annotated[float, Range(min=0, max=1, max_open=True)] = 0.15
    translate: NonNegativeFloat = 0.08
    elastic: NonNegativeFloat = 0.04

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self.source)

    def deformation(self) -> dict[str, float]:
        return {"rotate_deg": self.rotate_deg, "scale": self.scale, "translate": self.translate,
                "elastic": self.elastic}


@dataclass(frozen=True)
class TrainSettings(Section):
    section: ClassVar[str] = "train"
    steps: PositiveInt = 2000  # generator optimisation steps
    batch_size: PositiveInt = 32
    log_every: PositiveInt = 50  # steps between scalar logs
    sample_every: PositiveInt = 500  # steps between sample grids
    checkpoint_every: PositiveInt = 500  # steps between checkpoints
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Precision = "fp32"  # auto: bf16 where the hardware runs it natively; fp32 (default) elsewhere
    channels_last: Literal["auto", "on", "off"] | bool = "auto"  # auto: on for CUDA (YAML reads bare on/off as true/false)
    threads: PositiveInt | None = None  # torch CPU threads; None: the cores idle at start (threads_busy.md)
    # Wall-clock budget in seconds of training (summed over resumes): stop after the step that crosses it,
    # with a checkpoint; None: off (train.steps alone decides). Equal-time benchmarks set it for every generator.
    max_seconds: Annotated[float, Range(min=0, min_open=True)] | None = None


@dataclass(frozen=True)
class SegSettings(Section):
    """The downstream U-Net: everything that decides its trained weights (and so the baseline cache key)."""

    section: ClassVar[str] = "seg"

    steps: PositiveInt = 200  # optimizer steps per arm, the same for every arm
    batch_size: PositiveInt = 32  # slices per step
    lr: PositiveFloat = 3e-3  # Adam's peak learning rate (cosine at 1e-3 learned slower than constant 1e-3)
    base_channels: PositiveInt = 16  # U-Net width of the first level
    depth: PositiveInt = 4  # U-Net downsamplings (4: 64 x 64 -> 4 x 4)
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    # Learning rate over the steps: cosine (linear warm-up over `warmup` of the steps, then cosine decay
    # to 0; converges inside its budget, benchmarks/results/seg_learning_curve.md) or constant.
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup: Annotated[float, Range(min=0, max=0.5)] = 0.05  # share of the steps spent warming up (cosine)
    val_every: PositiveInt = 50  # steps between validations (model selection); the last step always
    patience: NonNegativeInt = 0  # early stopping: validations without a better val Dice before stopping; 0: off
    # Augmentation of every training batch, real and synthetic alike: none; standard (flips, small affine,
    # gamma and intensity jitter); strong (nnU-Net-style: larger affine, elastic, gamma, brightness,
    # contrast, low resolution, blur, noise). true/false (older configs) read as standard/none.
    augment: Literal["none", "standard", "strong"] | bool = "standard"
    elastic: NonNegativeFloat = 0.0  # elastic deformation strength (0: off)
    precision: Precision = "auto"  # auto: bf16 where the hardware runs it natively, else fp32
    channels_last: bool = True  # NHWC layout (faster convolutions on CPUs with oneDNN)
    threads: PositiveInt | None = None  # CPU threads while training/evaluating U-Nets; None: the current count
    # CPU: train an evaluation's U-Nets in this many spawned processes of one thread each (results are
    # train_unet's at 1 thread, whatever the count). auto: the idle cores when threads is None, else 1
    # (in this process at `threads`). 1: in this process at the current count (`threads`).
    processes: PositiveInt | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.augment, bool):  # the older boolean key
            object.__setattr__(self, "augment", "standard" if self.augment else "none")

    def to_dict(self) -> dict[str, Any]:
        """The settings that decide the weights (threads are keyed separately, as the count in effect;
        processes do not change a U-Net's weights, only how many train at once)."""
        out = dataclasses.asdict(self)
        out.pop("threads")
        out.pop("processes")
        return out


#: The core sections, in config order, with their settings class.
SECTIONS: dict[str, type] = {"run": RunSettings, "data": DataSettings, "split": SplitSettings,
                             "masks": MaskSettings, "train": TrainSettings, "seg": SegSettings}

#: Keys that moved, so an old config gets a pointer instead of a bare "unknown key".
MOVED = {
    **{f"evaluators.dice_gain.{k}": f"seg.{k}" for k in
       ("steps", "batch_size", "lr", "base_channels", "depth", "norm", "val_every", "augment", "elastic",
        "precision", "channels_last", "threads")},
    "train.amp": "train.precision",
}


def section_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """key -> (type hint, default) of a settings class."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = (hints[f.name], default)
    return out


def build_section(cls: type, values: dict[str, Any], where: str, source_of=lambda key: "config") -> Any:
    """A settings object from plain values, each checked against its field's type and range."""
    fields = section_fields(cls)
    kwargs = {}
    for key, value in values.items():
        hint, default = fields[key]  # unknown keys were refused while merging
        check_value(value, hint, f"{where}.{key}", source_of(f"{where}.{key}"), default)
        kwargs[key] = tuple(value) if isinstance(value, list) and typing.get_origin(hint) is tuple else value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a cross-field or value check in __post_init__
        raise ConfigError(f"{exc} (section '{where}', from {source_of(where)})") from None


def defaults_dict() -> dict[str, Any]:
    """The core sections' defaults as plain data (what ``configs/default.yaml`` must say)."""
    out: dict[str, Any] = {"seed": 0}
    for name, cls in SECTIONS.items():
        out[name] = {k: (list(v) if isinstance(v, tuple) else v) for k, (_, v) in section_fields(cls).items()}
    out["generator"], out["evaluators"] = {}, {}
    return out
