"""Plugin registries: one idiom for every plugin kind.

Built-in plugins are the modules named in ``MODULES`` of
``plugins/generators/__init__.py`` / ``plugins/evaluators/__init__.py`` (an
explicit list, not a folder scan); each is imported on its own so one broken
file cannot hide the rest. Installed packages add plugins through the entry-point groups
``ganseg.generators`` / ``ganseg.evaluators``; ``load_plugin_dir`` loads
loose files. Discovery happens once, on first access. A plugin that fails to
load is recorded with its error and never hides the others.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate plugin name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@dataclass
class LoadError:
    """A plugin source that failed to import."""

    source: str
    error: str
    detail: str


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    source: str


def closest(name: str, valid: list[str]) -> str:
    """' Did you mean X?' for the closest valid name, or ''."""
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


class Registry(Generic[T]):
    """Name -> plugin class, with lazy discovery.

    Args:
        kind: what is registered ("generator", "evaluator"), for messages.
        builtin_module: module whose import registers the built-in plugins.
        entry_point_group: entry-point group for installed plugins.
    """

    def __init__(self, kind: str, builtin_module: str, entry_point_group: str) -> None:
        self.kind = kind
        self.builtin_module = builtin_module
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self.errors: list[LoadError] = []
        self._discovered = False
        self._current_source = "builtin"

    # Registration -----------------------------------------------------------------

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@GENERATORS.register("vae")``."""
        if not isinstance(name, str) or not name or name != name.lower():
            raise ValueError(f"{self.kind} names are non-empty lowercase strings, got {name!r}")

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(
                    f"{self.kind} '{name}' is already registered "
                    f"(by {self._entries[name].source}); pick another name"
                )
            self._entries[name] = Entry(name, obj, self._current_source)
            obj.registry_name = name  # type: ignore[attr-defined]
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove a plugin (tests use this to clean up after themselves)."""
        self._entries.pop(name, None)

    # Discovery --------------------------------------------------------------------

    def _guarded(self, source: str, load: Callable[[], Any]) -> None:
        previous, self._current_source = self._current_source, source
        try:
            load()
        except Exception as exc:  # a broken plugin must never break the others
            self.errors.append(
                LoadError(source, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            )
        finally:
            self._current_source = previous

    def discover(self) -> None:
        """Import built-ins and entry points, once."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.builtin_module)
        for module in getattr(package, "MODULES", ()):
            qualified = f"{self.builtin_module}.{module}"
            self._guarded(f"builtin {qualified}", lambda q=qualified: importlib.import_module(q))
        for ep in entry_points(group=self.entry_point_group):
            self._guarded(f"entry point {ep.name} = {ep.value}", ep.load)

    def load_file(self, path: str | Path) -> None:
        """Import one plugin file; its ``register`` calls add to this registry."""
        path = Path(path)
        module_name = f"ganseg_user_plugins.{path.stem}"

        def load() -> None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(module_name, None)
                raise

        self._guarded(f"file {path}", load)

    # Lookup -----------------------------------------------------------------------

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        self.discover()
        return [self._entries[n] for n in sorted(self._entries)]

    def get(self, name: str) -> T:
        """The plugin called ``name``; an unknown name lists the valid ones."""
        self.discover()
        if name not in self._entries:
            valid = sorted(self._entries)
            hint = closest(name, valid)
            broken = [e.source for e in self.errors]
            extra = f" (plugins that failed to load: {', '.join(broken)})" if broken else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'.{hint} Valid: {', '.join(valid) or 'none'}{extra}"
            )
        return self._entries[name].obj

    def __getitem__(self, name: str) -> T:
        """``REGISTRY[name]``: the plugin a user named (config, command line); same as :meth:`get`."""
        return self.get(name)

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._entries


GENERATORS: Registry = Registry("generator", "plugins.generators", "ganseg.generators")
EVALUATORS: Registry = Registry("evaluator", "plugins.evaluators", "ganseg.evaluators")


def load_plugin_dir(folder: str | Path) -> list[Path]:
    """Import every ``*.py`` in ``folder`` (not recursive); returns the files tried.

    A file may register generators, evaluators or both; its errors are
    recorded in both registries' ``errors`` so ``list`` shows them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--plugins {folder}: not a folder of plugin .py files")
    GENERATORS.discover()
    EVALUATORS.discover()
    files = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    for path in files:
        n_errors = len(GENERATORS.errors)
        # One import serves both registries: an evaluator it registers is from this file too, not "builtin".
        previous, EVALUATORS._current_source = EVALUATORS._current_source, f"file {path}"
        try:
            GENERATORS.load_file(path)
        finally:
            EVALUATORS._current_source = previous
        # Mirror a failure into the other's report.
        if len(GENERATORS.errors) > n_errors:
            EVALUATORS.errors.append(GENERATORS.errors[-1])
    return files
