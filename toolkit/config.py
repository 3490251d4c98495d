"""Layered YAML configuration with validation before any work starts.

Layers merge in order: ``configs/default.yaml`` < ``configs/profiles/<p>.yaml``
< ``configs/generators/<name>.yaml`` < user ``--config`` files < ``--set``
overrides. ``default.yaml`` is the schema of the core sections: a key it does
not have is an error, and a value must have its default's type (any value
where the default is null). The ``generator`` and ``evaluators.<name>``
sections are checked against the plugin constructor's signature. Every error
names the key, the layer it came from and what would be valid. No value is
evaluated as code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toolkit.registry import EVALUATORS, GENERATORS, RegistryError, closest
from toolkit.schema import ConfigError, check_type, check_value, plugin_params  # noqa: F401  (re-exported API)
from toolkit.settings import (
    MOVED,
    SECTIONS,
    DataSettings,
    MaskSettings,
    RunSettings,
    SegSettings,
    SplitSettings,
    TrainSettings,
    build_section,
    defaults_dict,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PLUGIN_SECTIONS = ("generator", "evaluators")
PROFILES = ("smoke", "quick", "full")


@dataclass
class Config:
    """A resolved config: nested plain data, where each leaf came from, and the typed core sections.

    ``config.train.steps`` reads a typed setting; ``config["generator"]`` a plugin
    section (plain keyword arguments); ``config.data`` is the ``data`` section
    and ``config.raw`` the whole plain tree (what ``config.yaml`` holds).
    """

    raw: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.source_of
        built = {name: build_section(cls, self.raw[name], name, where) for name, cls in SECTIONS.items()}
        self.run: RunSettings = built["run"]
        self.data: DataSettings = built["data"]
        self.split: SplitSettings = built["split"]
        self.masks: MaskSettings = built["masks"]
        self.train: TrainSettings = built["train"]
        self.seg: SegSettings = built["seg"]
        check_value(self.raw["seed"], int, "seed", where("seed"))
        self.seed: int = int(self.raw["seed"])

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def replace(self, changes: dict[str, Any], origin: str = "replace") -> Config:
        """A copy with dotted keys replaced (e.g. a benchmark cell), validated like any layer."""
        layer: dict[str, Any] = {}
        for dotted, value in changes.items():
            *parents, leaf = dotted.split(".")
            node = layer
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        _check_against_schema(layer, defaults_dict(), origin)
        raw, sources = copy.deepcopy(self.raw), dict(self.sources)
        _merge(raw, layer, sources, origin)
        config = Config(raw, sources)
        validate_plugins(config)
        return config

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False, default_flow_style=None)

    def source_of(self, dotted: str) -> str:
        """The layer that set ``dotted`` (or the nearest parent that did)."""
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            key = ".".join(parts[:i])
            if key in self.sources:
                return self.sources[key]
        return "configs/default.yaml"


# Loading and merging -----------------------------------------------------------------


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML layer; it must be a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path) as f:  # a stream, so YAML errors name the file instead of <unicode string>
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, found {type(data).__name__}")
    return data


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _merge(base: dict[str, Any], layer: dict[str, Any], sources: dict[str, str], origin: str,
           prefix: str = "") -> None:
    for key, value in layer.items():
        if not isinstance(key, str):
            raise ConfigError(f"{origin}: key {key!r} under '{prefix.rstrip('.') or 'top level'}' must be a string")
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            sources.setdefault(dotted, origin)
            _merge(base[key], value, sources, origin, dotted + ".")
        else:
            base[key] = copy.deepcopy(value)
            sources[dotted] = origin
            for sub in _flatten(value, dotted + ".") if isinstance(value, dict) else {}:
                sources[sub] = origin


def parse_override(expr: str) -> dict[str, Any]:
    """``a.b=c`` -> ``{"a": {"b": c}}``; the value is read as a YAML scalar or list."""
    if "=" not in expr:
        raise ConfigError(f"--set {expr!r}: expected KEY=VALUE, for example --set train.steps=100")
    key, raw = expr.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {expr!r}: the key must be dotted names such as train.steps")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node: dict[str, Any] = {}
    root = node
    parts = key.split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return root


def resolve(
    generator: str | None = None,
    profile: str | None = "quick",
    config_files: tuple[str | Path, ...] | list[str | Path] = (),
    overrides: tuple[str, ...] | list[str] = (),
    config_dir: Path = CONFIG_DIR,
) -> Config:
    """Merge the layers, validate the result and build the typed sections.

    Args:
        generator: generator name; selects ``configs/generators/<name>.yaml``
            and sets ``run.generator``. None keeps the configured one.
        profile: ``smoke``, ``quick`` or ``full`` (or None for the defaults alone).
        config_files: user YAML files, applied in order.
        overrides: ``a.b=c`` strings, applied last.
    """
    schema = defaults_dict()
    layers: list[tuple[str, dict[str, Any]]] = [("configs/default.yaml", load_yaml(config_dir / "default.yaml"))]
    if profile is not None:
        path = config_dir / "profiles" / f"{profile}.yaml"
        if not path.is_file():
            valid = sorted(p.stem for p in (config_dir / "profiles").glob("*.yaml"))
            raise ConfigError(f"unknown profile '{profile}'.{closest(profile, valid)} Valid: {', '.join(valid)}")
        layers.append((f"configs/profiles/{profile}.yaml", load_yaml(path)))
    user = [(str(f), load_yaml(f)) for f in config_files] + [("--set " + o, parse_override(o)) for o in overrides]
    # The generator name may come from any layer, so find it before adding its own layer (after the profile).
    name = generator
    if name is None:
        probe: dict[str, Any] = {}
        for origin, layer in layers + user:
            _merge(probe, layer, {}, origin)
        name = (probe.get("run") or {}).get("generator", RunSettings.generator)
    path = config_dir / "generators" / f"{name}.yaml"
    if isinstance(name, str) and path.is_file():
        layers.append((f"configs/generators/{name}.yaml", load_yaml(path)))
    layers += user
    if generator is not None:
        layers.append(("--generator", {"run": {"generator": generator}}))

    data: dict[str, Any] = copy.deepcopy(schema)
    sources: dict[str, str] = {}
    for origin, layer in layers:
        _check_against_schema(layer, schema, origin)
        _merge(data, layer, sources, origin)
    config = Config(data, sources)
    validate_plugins(config)
    return config


# Validation ---------------------------------------------------------------------------


def _check_against_schema(layer: dict[str, Any], schema: dict[str, Any], origin: str, prefix: str = "") -> None:
    """Keys and nesting of one layer (types and ranges are checked when the sections are built)."""
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if not prefix and key in PLUGIN_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' (from {origin}) must be a mapping of keyword arguments")
            continue  # checked against the plugin signature once the plugin is known
        if key not in schema:
            hint = f" It has moved to '{MOVED[dotted]}'." if dotted in MOVED else closest(str(key), sorted(schema))
            raise ConfigError(
                f"unknown config key '{dotted}' (from {origin}).{hint} "
                f"Valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(schema))}"
            )
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' (from {origin}) must be a mapping, got {value!r}")
            _check_against_schema(value, schema[key], origin, dotted + ".")


def validate_section(cls: type, section: dict[str, Any], where: str, config: Config | None = None) -> None:
    """Check a plugin's config section against its constructor signature."""
    params = plugin_params(cls)
    for key, value in section.items():
        dotted = f"{where}.{key}"
        origin = config.source_of(dotted) if config else "config"
        if key not in params and dotted in MOVED:
            raise ConfigError(f"config key '{dotted}' (from {origin}) has moved to '{MOVED[dotted]}': the "
                              "segmenter is a core section shared by dice_gain and the seg feature space")
        if key not in params:
            valid = sorted(params)
            raise ConfigError(
                f"unknown config key '{dotted}' (from {origin}): {cls.__name__} takes no '{key}'."
                f"{closest(str(key), valid)} Valid keys: {', '.join(valid) or 'none'}"
            )
        hint, default = params[key]
        check_value(value, hint, dotted, origin, default)


def validate_plugins(config: Config) -> None:
    """Check the generator and evaluator sections against the plugins they configure."""
    run = config["run"]
    try:
        generator_cls = GENERATORS[run["generator"]]
    except RegistryError as exc:
        raise ConfigError(f"run.generator (from {config.source_of('run.generator')}): {exc}") from None
    validate_section(generator_cls, config["generator"], "generator", config)

    evaluators = run["evaluators"]
    for name in evaluators:
        if not isinstance(name, str):
            raise ConfigError(f"run.evaluators must list evaluator names, got {name!r}")
        try:
            EVALUATORS[name]
        except RegistryError as exc:
            raise ConfigError(f"run.evaluators (from {config.source_of('run.evaluators')}): {exc}") from None
    for name, section in config["evaluators"].items():
        try:
            cls = EVALUATORS[name]
        except RegistryError as exc:
            raise ConfigError(f"evaluators.{name} (from {config.source_of('evaluators.' + name)}): {exc}") from None
        if not isinstance(section, dict):
            raise ConfigError(f"evaluators.{name} must be a mapping of keyword arguments, got {section!r}")
        validate_section(cls, section, f"evaluators.{name}", config)


def plugin_kwargs(cls: type, section: dict[str, Any], tiny: bool = False) -> dict[str, Any]:
    """Constructor kwargs: the plugin's ``tiny`` settings (if asked) under the config section."""
    kwargs = dict(getattr(cls, "tiny", {})) if tiny else {}
    kwargs.update(section)
    return kwargs
