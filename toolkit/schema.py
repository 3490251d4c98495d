"""Type and range checks of config values against type hints: one machinery for core sections and plugins.

A setting declares its type with an ordinary hint, and its allowed range with
``Annotated``::

    steps: Annotated[int, Range(min=1)] = 200      # or the alias PositiveInt
    ratio: Annotated[float, Range(min=0, min_open=True)] = 1.0

The core's typed settings (``toolkit.settings``) and plugin constructors are
checked by the same :func:`check_value`, so every error names the key, the
value, where it came from and what is allowed, before any work starts.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message says what would be right."""


@dataclass(frozen=True)
class Range:
    """Allowed interval of a number: ``min <= x <= max`` (open ends with ``min_open`` / ``max_open``)."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def contains(self, value: float) -> bool:
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        return not (self.max is not None and (value >= self.max if self.max_open else value > self.max))

    def describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_open else '>='} {self.min:g}")
        if self.max is not None:
            parts.append(f"{'<' if self.max_open else '<='} {self.max:g}")
        return " and ".join(parts)


PositiveInt = Annotated[int, Range(min=1)]
NonNegativeInt = Annotated[int, Range(min=0)]
PositiveFloat = Annotated[float, Range(min=0, min_open=True)]
NonNegativeFloat = Annotated[float, Range(min=0)]
UnitInterval = Annotated[float, Range(min=0, max=1)]


def _strip(hint: Any) -> tuple[Any, list[Range]]:
    """The hint without ``Annotated`` metadata, and the ranges it declared."""
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        return base, [m for m in meta if isinstance(m, Range)]
    return hint, []


def check_type(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a type hint (int fits float; None fits Optional; ranges are not checked)."""
    hint, _ = _strip(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(check_type(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(check_type(v, a) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return all(check_type(v, inner) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def range_error(value: Any, hint: Any) -> str | None:
    """What is wrong with ``value``'s range under ``hint`` (also inside Optional and lists), or None."""
    base, ranges = _strip(hint)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for r in ranges:
            if not r.contains(value):
                return f"must be {r.describe()}"
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(base):
            if check_type(value, arg):
                return range_error(value, arg)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(base)
        inner = args if origin is tuple and args and args[-1] is not Ellipsis else [args[0] if args else Any] * len(value)
        for v, a in zip(value, inner):
            problem = range_error(v, a)
            if problem:
                return f"items {problem}"
    return None


def hint_name(hint: Any) -> str:
    """A hint in words: 'an integer (>= 1)', 'one of auto, fp32, bf16', 'a number or null'."""
    base, ranges = _strip(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin in (typing.Union, types.UnionType):
        name = " or ".join("null" if a is type(None) else hint_name(a) for a in args)
    elif origin is typing.Literal:
        name = "one of " + ", ".join(str(a) for a in args)
    elif origin in (list, tuple) or base in (list, tuple):
        name = f"a list of {len(args)}" if origin is tuple and args and args[-1] is not Ellipsis else "a list"
    else:
        words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
        name = words.get(base, base.__name__ if isinstance(base, type) else str(base).replace("typing.", ""))
    return name + (f" ({', '.join(r.describe() for r in ranges)})" if ranges else "")


def check_value(value: Any, hint: Any, key: str, origin: str, default: Any = inspect.Parameter.empty) -> None:
    """Raise :class:`ConfigError` naming ``key`` when ``value`` does not fit ``hint`` (type, then range)."""
    shown = "" if default is inspect.Parameter.empty else f" (default {default!r})"
    if not check_type(value, hint):
        raise ConfigError(f"config key '{key}' (from {origin}) must be {hint_name(hint)}{shown}, "
                         f"got {value!r} ({type(value).__name__})")
    problem = range_error(value, hint)
    if problem:
        raise ConfigError(f"config key '{key}' (from {origin}) {problem}{shown}, got {value!r}")


#: Arguments the core passes to every plugin constructor; they are not config keys.
CORE_ARGS = ("self", "spec", "device")


def plugin_params(cls: type) -> dict[str, tuple[Any, Any]]:
    """Config keys of a plugin: name -> (type hint, default) from its constructor."""
    init = cls.__init__
    try:
        hints = typing.get_type_hints(init, include_extras=True)
    except Exception:  # unresolvable annotations: fall back to no type checks
        hints = {}
    params = {}
    for name, param in inspect.signature(init).parameters.items():
        if name in CORE_ARGS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        params[name] = (hints.get(name, Any), param.default)
    return params
