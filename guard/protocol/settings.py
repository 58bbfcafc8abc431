"""Typed reading of TOML config tables: every layer reads its own table of a model's config.toml
with a TableReader, and a bad value raises ConfigError naming the file, the dotted key and what
was expected. `Param` declares one parameter of a pluggable part (detector, preprocessor), so a
new part is one class with its parameters, validated here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any, TypeVar, cast

from guard.protocol.errors import ConfigError
from guard.protocol.paths import OutsideDirectory, inside_directory

T = TypeVar("T")


class TableReader:
    """Reads typed values out of a TOML table, remembering the key path for error messages."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = ""):
        self.path, self.table, self.prefix = path, table, prefix

    @property
    def directory(self) -> Path:
        return self.path.parent

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, expected: str, got: object = None) -> ConfigError:
        return ConfigError(self.path, self.key(name), expected, got)

    def get(self, name: str, kind: type[T], default: T | EllipsisType = ..., expected: str = "") -> T:
        """The value of `name`, which must be a `kind` (an int is accepted as a float); `default` when
        it is absent, and absent with no default (...) is an error."""
        if name not in self.table:
            if default is ...:
                raise ConfigError(self.path, self.key(name), f"{expected or kind.__name__} (missing)")
            return default
        value = self.table[name]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.fail(name, expected or f"a {kind.__name__}", value)
        return cast(T, value)  # a `kind`, checked just above

    def positive(self, name: str, default: int | EllipsisType, allow_zero: bool = False) -> int:
        value = self.get(name, int, default)
        if value < 0 or (value == 0 and not allow_zero):
            raise self.fail(name, "a non-negative integer" if allow_zero else "a positive integer", value)
        return value

    def positive_float(self, name: str, default: float | EllipsisType, what: str = "a positive number") -> float:
        value = self.get(name, float, default, what)
        if not (math.isfinite(value) and value > 0):
            raise self.fail(name, what, value)
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str | EllipsisType = ...) -> str:
        value = self.get(name, str, default)
        if value not in options:
            raise self.fail(name, "one of " + ", ".join(options), value)
        return value

    def file(
        self, name: str, default: str | EllipsisType = ..., what: str = "an existing file", anywhere: bool = False
    ) -> Path:
        """A file named relative to the config's directory, which must exist and, unless `anywhere`
        (an evaluation plan naming data elsewhere), stay inside that directory (guard.protocol.paths)."""
        value = self.get(name, str, default)
        path = self.directory / value if anywhere else self.inside(name, value)
        if not path.is_file():
            raise self.fail(name, f"{what} in {self.directory}", value)
        return path

    def inside(self, name: str, value: str) -> Path:
        """The path the key `name` gives as `value`, which must stay inside the config's directory
        (the model directory) once symlinks are followed; the file need not exist."""
        try:
            return inside_directory(self.directory, value)
        except OutsideDirectory as exc:
            raise self.fail(name, f"a file inside the model directory {self.directory}: {exc}") from None

    def sub(self, name: str) -> TableReader:
        return TableReader(self.path, self.get(name, dict, {}, "a table"), f"{self.key(name)}.")

    def tables(self, name: str) -> list[TableReader]:
        """A [[name]] array of tables, each with its indexed key path."""
        entries = self.get(name, list, [], f"a list of [[{name}]] tables")
        readers = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise self.fail(f"{name}[{i}]", "a table", entry)
            readers.append(TableReader(self.path, entry, f"{self.key(name)}[{i}]."))
        return readers

    def unknown(self, known: set[str] | tuple[str, ...]) -> None:
        extra = sorted(set(self.table) - set(known))
        if extra:
            raise self.fail(extra[0], "a known key (" + ", ".join(sorted(known)) + ")")


@dataclass(frozen=True)
class Param:
    """One parameter of a pluggable part in config.toml: its type, bounds and default (... = required)."""

    kind: type
    low: float | None = None
    high: float | None = None
    default: Any = ...
    artifact: bool = False
    """A file name inside the model directory, written when the part is fitted and read on load."""
    file: bool = False
    """A file name inside the model directory that nothing fits (a tokenizer); artifacts are files too."""
    hint: str = "run `guard calibrate`"
    """What makes a missing artifact, for the error message."""


def _number_ok(value: Any, spec: Param) -> bool:
    if spec.kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        return False
    if spec.kind is float and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    ):
        return False
    return (spec.low is None or value >= spec.low) and (spec.high is None or value <= spec.high)


def read_param(reader: TableReader, name: str, spec: Param, check_artifacts: bool) -> Any:
    value = reader.table.get(name, spec.default)
    if value is ...:
        raise reader.fail(name, f"a {spec.kind.__name__} (required)")
    if spec.kind is str:
        # An empty default means "none" (an optional name); a config may not spell it out empty.
        if not isinstance(value, str) or (not value and name in reader.table):
            raise reader.fail(name, "a non-empty string", value)
        if spec.artifact or spec.file:  # even when not read yet: `guard calibrate` writes artifacts there
            path = reader.inside(name, value)
            if spec.artifact and check_artifacts and not path.is_file():
                raise reader.fail(name, f"an artifact file in {reader.directory} ({spec.hint})", value)
        return value
    if spec.kind is list:
        if not isinstance(value, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        ):
            raise reader.fail(name, "a list of finite numbers", value)
        return [float(v) for v in value]
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise reader.fail(name, "true or false", value)
        return value
    if not _number_ok(value, spec):
        bounds = f" in [{spec.low:g}, {spec.high:g}]" if spec.low is not None and spec.high is not None else ""
        raise reader.fail(name, f"{'an integer' if spec.kind is int else 'a number'}{bounds}", value)
    return spec.kind(value)


def read_params(reader: TableReader, parameters: dict[str, Param], check_artifacts: bool = True) -> dict[str, Any]:
    return {name: read_param(reader, name, spec, check_artifacts) for name, spec in parameters.items()}
