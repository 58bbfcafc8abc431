"""Plugins: parts another installed package adds through Python entry points, without editing guard.

Each registry of a pluggable part is its built-in dict (a new in-tree part is one file plus one
line there) merged with one entry-point group:

    guard.detectors      a Detector subclass       config [[detectors]] type   guard.detection.detectors
    guard.preprocessors  a Preprocessor subclass   config [preprocess] kind    guard.detection.preprocess
    guard.backends       a Backend subclass        config [backend] kind       guard.backends
    guard.attacks        an attack factory         plan [[attacks]] name       guard.tools.evaluation.attacks

A group is loaded once per process, the first time its registry is read: every entry point is
imported and checked. One that cannot be used is refused, with a reason naming its distribution
and entry point, and logged once as a warning:

- it takes a built-in's name: the built-in keeps it, so installing a package never changes what
  an existing config means;
- two distributions register the same name: both are refused;
- it does not import, or is not the right type (a class: a concrete subclass of the part's base
  whose `kind` is the entry point's name, the name the part writes back into a config).

A refused plugin no config names costs the warning only; a config that names it fails to load with
a ConfigError at that key, carrying the reason.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from guard.protocol.settings import TableReader

log = logging.getLogger("guard.plugins")

V = TypeVar("V")

_FORGET: list[Callable[[], None]] = []
"""Every registry's forget(), for forget_loaded()."""


def describe(entry_point: EntryPoint) -> str:
    """'entry point noise_sensitivity = pkg:Cls (group guard.detectors) of distribution pkg 0.1'."""
    dist = entry_point.dist
    origin = f"distribution {dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"entry point {entry_point.name} = {entry_point.value} (group {entry_point.group}) of {origin}"


def subclass_of(base: type) -> Callable[[str, object], type[Any]]:
    """The check for parts that are classes: a concrete subclass of `base` whose `kind` is the
    entry point's name. Raises TypeError saying what is wrong. (`base` is a plain `type`, and the
    class comes back as `type[Any]` for the registry to take as its own: mypy refuses an abstract
    base where a `type[C]` is expected.)"""

    def check(name: str, value: object) -> type[Any]:
        if not (isinstance(value, type) and issubclass(value, base)):
            raise TypeError(f"not a subclass of {base.__module__}.{base.__qualname__} ({value!r})")
        if inspect.isabstract(value):
            missing = ", ".join(sorted(getattr(value, "__abstractmethods__", ())))
            raise TypeError(f"{value.__qualname__} is abstract (it does not implement {missing})")
        kind = getattr(value, "kind", None)
        if kind != name:
            raise TypeError(f"{value.__qualname__}.kind is {kind!r}, not the entry point's name {name!r}")
        return value

    return check


@dataclass(frozen=True)
class LoadedGroup(Generic[V]):
    loaded: dict[str, V]
    """Plugins that passed every check, by entry point name."""
    refused: dict[str, str]
    """Plugins refused, by entry point name: why, naming the distribution and entry point."""


class PluginRegistry(Generic[V]):
    """A part's built-ins plus the plugins of one entry-point group, by the name configs use."""

    def __init__(self, group: str, builtins: dict[str, V], check: Callable[[str, object], V], what: str):
        """builtins: the in-tree dict, read live (tests may add to it); check(name, value) returns the
        part or raises TypeError; what: the part, for messages ("detector type")."""
        self.group, self.builtins, self.what = group, builtins, what
        self._check = check
        self._group: LoadedGroup[V] | None = None
        self._lock = threading.Lock()
        _FORGET.append(self.forget)

    def plugins(self) -> LoadedGroup[V]:
        """The group's plugins, loaded on first use."""
        with self._lock:
            if self._group is None:
                self._group = self._load()
            return self._group

    def entries(self) -> dict[str, V]:
        """Every usable part by name: the built-ins, then the plugins (a built-in keeps its name)."""
        plugins = self.plugins().loaded
        return {**self.builtins, **{name: v for name, v in plugins.items() if name not in self.builtins}}

    def names(self) -> tuple[str, ...]:
        return tuple(self.entries())

    def get(self, name: str) -> V:
        """The part called `name`; KeyError saying why there is none (a refused plugin's reason)."""
        entries = self.entries()
        if name not in entries:
            raise KeyError(f"{self.what} {name!r}: expected {self._expected(name, entries)}")
        return entries[name]

    def resolve(self, reader: TableReader, key: str, name: object) -> V:
        """The part a config's `key` names; a ConfigError at that key otherwise."""
        entries = self.entries()
        if not isinstance(name, str) or name not in entries:
            raise reader.fail(key, self._expected(name, entries), name)
        return entries[name]

    def forget(self) -> None:
        """Load the group again on next use (tests; a process that installed a package meanwhile)."""
        with self._lock:
            self._group = None

    def _expected(self, name: object, entries: dict[str, V]) -> str:
        reason = self.plugins().refused.get(name) if isinstance(name, str) else None
        if reason is not None:
            return f"a {self.what} plugin that loads (refused: {reason})"
        return "one of " + ", ".join(entries)

    def _load(self) -> LoadedGroup[V]:
        found: dict[str, list[EntryPoint]] = {}
        for entry_point in entry_points(group=self.group):
            found.setdefault(entry_point.name, []).append(entry_point)
        loaded: dict[str, V] = {}
        refused: dict[str, str] = {}
        for name, candidates in found.items():
            reason = self._refusal(name, candidates)
            if reason is None:
                reason, part = self._import(name, candidates[0])
                if part is not None:
                    loaded[name] = part
            if reason is not None:
                refused[name] = reason
                log.warning("%s plugin %r refused: %s", self.what, name, reason)
            else:
                log.info("%s plugin %r loaded from %s", self.what, name, describe(candidates[0]))
        return LoadedGroup(loaded, refused)

    def _import(self, name: str, entry_point: EntryPoint) -> tuple[str | None, V | None]:
        """(None, the checked part), or (why it was refused, None)."""
        try:
            value = entry_point.load()
        except Exception as exc:  # noqa: BLE001 - whatever importing a third party's module raises
            return f"{describe(entry_point)}: does not import ({type(exc).__name__}: {exc})", None
        try:
            return None, self._check(name, value)
        except TypeError as exc:
            return f"{describe(entry_point)}: {exc}", None

    def _refusal(self, name: str, candidates: list[EntryPoint]) -> str | None:
        """Why the entry points called `name` cannot be used, before importing anything."""
        if len(candidates) > 1:
            return "registered more than once: " + "; ".join(describe(c) for c in candidates)
        if name in self.builtins:
            return f"{describe(candidates[0])}: takes the name of a built-in {self.what}, which keeps it"
        return None


def forget_loaded() -> None:
    """Every registry loads its group again on next use."""
    for forget in _FORGET:
        forget()
