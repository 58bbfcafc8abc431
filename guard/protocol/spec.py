"""What a model takes and returns: tensor specs as config.toml declares them, and the check of a
declaration against what a backend reports (an ONNX file's graph, an upstream's metadata)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from guard.protocol.errors import ConfigError
from guard.protocol.settings import TableReader
from guard.protocol.tensors import DATATYPES


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """Shape of one item, batch dimension excluded; -1 marks a variable dimension."""
    range: tuple[float, float] | None = None
    """Inclusive value range every element must lie in; None accepts any finite value."""
    layout: str = ""
    """Informational, e.g. NCHW or NHWC."""


@dataclass(frozen=True)
class ModelSpec:
    """The model as its backend runs it: the tensors it takes (after any preprocessing) and
    returns, and the internal features output feature-space detectors read."""

    name: str
    version: str
    directory: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    features_output: str | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "config.toml"

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)


def read_tensor(reader: TableReader) -> TensorSpec:
    reader.unknown({"name", "datatype", "shape", "range", "layout"})
    shape = reader.get("shape", list, expected="a list of dimensions (batch excluded)")
    if not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in shape):
        raise reader.fail("shape", "positive integers or -1", shape)
    given = reader.get("range", list, None)
    value_range = None
    if given is not None:
        if (
            len(given) != 2
            or not all(isinstance(v, (int, float)) for v in given)
            or not all(math.isfinite(v) for v in given)
            or given[0] > given[1]
        ):
            raise reader.fail("range", "[low, high] with finite low <= high", given)
        value_range = (float(given[0]), float(given[1]))
    return TensorSpec(
        name=reader.get("name", str),
        datatype=reader.choice("datatype", DATATYPES),
        shape=tuple(shape),
        range=value_range,
        layout=reader.get("layout", str, ""),
    )


def read_tensors(reader: TableReader, key: str) -> tuple[TensorSpec, ...]:
    tables = reader.tables(key)
    if not tables:
        raise reader.fail(key, f"at least one [[{key}]] tensor")
    specs = tuple(read_tensor(table) for table in tables)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise reader.fail(key, "unique tensor names", names)
    return specs


def check_signature(
    path: Path,
    declared: dict[str, tuple[TensorSpec, ...]],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    source: str,
) -> None:
    """Fail with file and key when declared {"inputs": ..., "outputs": ...} disagree with what
    `source` reports (shapes exclude the batch dimension; -1 in `source` matches any size)."""
    for key, actual in (("inputs", inputs), ("outputs", outputs)):
        by_name = {spec.name: spec for spec in actual}
        for i, spec in enumerate(declared[key]):
            found = by_name.get(spec.name)
            if found is None:
                raise ConfigError(
                    path, f"{key}[{i}].name", f"an {key[:-1]} of {source} ({', '.join(by_name)})", spec.name
                )
            if found.datatype != spec.datatype:
                raise ConfigError(path, f"{key}[{i}].datatype", f"{found.datatype} as in {source}", spec.datatype)
            compatible = len(found.shape) == len(spec.shape) and all(
                m == -1 or m == d for m, d in zip(found.shape, spec.shape)
            )
            if not compatible:
                raise ConfigError(
                    path,
                    f"{key}[{i}].shape",
                    f"a shape compatible with {source} ({list(found.shape)})",
                    list(spec.shape),
                )
    missing = [s.name for s in inputs if s.name not in {d.name for d in declared["inputs"]}]
    if missing:
        raise ConfigError(path, "inputs", f"every input of {source} declared (missing {missing})")
