"""Checks a request against the model's declared inputs and outputs.

Every failure names the tensor and what was expected, so a client can fix the request; nothing
here mutates state, so a bad request leaves the server exactly as it was. Client strings in the
messages go through `echo` (capped, escaped).

The checks come in the order a transport can afford them: names and counts first (reading at most
one name more than the model declares, so naming an output a million times costs what naming it
twice does), then each input's header (datatype, shape, batch) before its contents are decoded,
then the values. `validate` runs them all on a decoded request; a transport that has not decoded
its tensors yet hands the data plane an `EncodedInputs` that runs the first two before decoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Protocol

import numpy as np

from guard.protocol.codec import TensorHeader
from guard.protocol.errors import InvalidInput
from guard.protocol.limits import echo
from guard.protocol.spec import TensorSpec
from guard.protocol.types import InferRequest
from guard.serving.model_config import ModelConfig


class EncodedInputs(Protocol):
    """A request's tensors as a transport received them. `decode` checks them against `config`
    (check_outputs, check_input_names, check_headers, in that order, before any contents are
    decoded) and returns the inputs, the requested outputs and each input's datatype; it raises
    InvalidInput like `validate`."""

    async def decode(self, config: ModelConfig) -> tuple[dict[str, np.ndarray], tuple[str, ...], dict[str, str]]: ...


def check_outputs(config: ModelConfig, names: Iterable[str]) -> tuple[str, ...]:
    """The requested outputs, each declared and named once. Any len(declared) + 1 names hold an
    unknown or a repeated one, so no more than that are read, however many the request names."""
    known = [spec.name for spec in config.outputs]
    wanted: list[str] = []
    for name in islice(names, len(known) + 1):
        if name not in known:
            raise InvalidInput(f"requested output {echo(name)} does not exist: expected one of {sorted(known)}")
        if name in wanted:
            raise InvalidInput(f"requested output {echo(name)} appears more than once")
        wanted.append(name)
    return tuple(wanted)


def check_input_names(config: ModelConfig, names: Iterable[str]) -> None:
    """Every input named is declared, and named once (reads at most len(declared) + 1 names)."""
    declared = {spec.name for spec in config.inputs}
    seen: set[str] = set()
    for name in islice(names, len(declared) + 1):
        if name not in declared:
            raise InvalidInput(
                f"unexpected input {echo(name)} for model '{config.name}': expected inputs {sorted(declared)}"
            )
        if name in seen:
            raise InvalidInput(f"input {echo(name)} appears more than once")
        seen.add(name)


def check_headers(config: ModelConfig, headers: Iterable[TensorHeader]) -> int:
    """Every declared input present with its datatype and shape, the inputs agreeing on the batch
    dimension and within max_batch_size; returns the batch size. Reads no tensor contents."""
    by_name = {header.name: header for header in headers}
    declared = sorted(spec.name for spec in config.inputs)
    for spec in config.inputs:
        header = by_name.get(spec.name)
        if header is None:
            raise InvalidInput(f"input '{spec.name}' is missing: model '{config.name}' expects inputs {declared}")
        _check_header(spec, header.datatype, header.shape)
    rows = {name: header.shape[0] for name, header in by_name.items()}
    if len(set(rows.values())) != 1:
        raise InvalidInput(f"inputs disagree on the batch dimension: {rows}")
    batch = next(iter(rows.values()))
    limit = config.batching.max_batch_size
    if batch > limit:
        raise InvalidInput(
            f"input '{config.inputs[0].name}': batch dimension {batch} exceeds the model's max_batch_size {limit}"
        )
    return batch


def _check_header(spec: TensorSpec, datatype: str, shape: tuple[int, ...]) -> None:
    if datatype != spec.datatype:
        raise InvalidInput(f"input '{spec.name}': expected datatype {spec.datatype}, got {datatype}")
    expected = ("N", *spec.shape)
    if len(shape) != len(expected):
        raise InvalidInput(
            f"input '{spec.name}': expected rank {len(expected)} with shape "
            f"{_shape_text(expected)}, got shape {list(shape)}"
        )
    if shape[0] < 1:
        raise InvalidInput(f"input '{spec.name}': expected at least one row in the batch dimension")
    for dim, (want, got) in enumerate(zip(spec.shape, shape[1:]), start=1):
        if want != -1 and want != got:
            raise InvalidInput(
                f"input '{spec.name}': expected shape {_shape_text(expected)}, "
                f"got {list(shape)} (dimension {dim} is {got}, expected {want})"
            )
        if got < 1:  # a free dimension of zero: nothing for the model or the detectors to look at
            raise InvalidInput(
                f"input '{spec.name}': expected shape {_shape_text(expected)}, "
                f"got {list(shape)} (dimension {dim} is {got}, expected at least 1)"
            )


def _check_values(spec: TensorSpec, array: np.ndarray) -> None:
    if spec.range is not None and array.size and array.dtype.kind in "biuf":
        low, high = spec.range
        lo, hi = array.min(), array.max()
        # NaN fails both comparisons and Inf one of them, so finiteness is only checked on failure:
        # one pass over the data fewer on the hot path.
        if not (lo >= low and hi <= high):
            _check_finite(spec, array)
            raise InvalidInput(
                f"input '{spec.name}': expected values in [{low:g}, {high:g}], "
                f"got values in [{float(lo):g}, {float(hi):g}]"
            )
    else:
        _check_finite(spec, array)


def _check_finite(spec: TensorSpec, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input '{spec.name}': expected finite values, got NaN or Inf")


def _shape_text(shape: tuple) -> str:
    return "[" + ", ".join("N" if d == "N" else "*" if d == -1 else str(d) for d in shape) + "]"


def validate(config: ModelConfig, request: InferRequest, datatypes: dict[str, str]) -> int:
    """Validate a decoded request against config; returns the request's number of rows (its batch size)."""
    check_input_names(config, request.inputs)
    check_outputs(config, request.outputs)
    rows = check_headers(
        config, [TensorHeader(name, datatypes[name], array.shape) for name, array in request.inputs.items()]
    )
    for spec in config.inputs:
        _check_values(spec, request.inputs[spec.name])
    return rows
