"""Checks a decoded request against the model's declared inputs and outputs.

Every failure names the tensor and what was expected, so a client can fix the request; nothing
here mutates state, so a bad request leaves the server exactly as it was.
"""

from __future__ import annotations

import numpy as np

from guard.protocol.errors import InvalidInput
from guard.protocol.spec import TensorSpec
from guard.protocol.types import InferRequest
from guard.serving.model_config import ModelConfig


def _check_tensor(spec: TensorSpec, array: np.ndarray, datatype: str) -> None:
    if datatype != spec.datatype:
        raise InvalidInput(f"input '{spec.name}': expected datatype {spec.datatype}, got {datatype}")
    expected = ("N", *spec.shape)
    if array.ndim != len(expected):
        raise InvalidInput(f"input '{spec.name}': expected rank {len(expected)} with shape "
                           f"{_shape_text(expected)}, got shape {list(array.shape)}")
    if array.shape[0] < 1:
        raise InvalidInput(f"input '{spec.name}': expected at least one row in the batch dimension")
    for dim, (want, got) in enumerate(zip(spec.shape, array.shape[1:]), start=1):
        if want != -1 and want != got:
            raise InvalidInput(f"input '{spec.name}': expected shape {_shape_text(expected)}, "
                               f"got {list(array.shape)} (dimension {dim} is {got}, expected {want})")
    if spec.range is not None and array.size:
        low, high = spec.range
        lo, hi = array.min(), array.max()
        # NaN fails both comparisons and Inf one of them, so finiteness is only checked on failure:
        # one pass over the data fewer on the hot path.
        if not (lo >= low and hi <= high):
            _check_finite(spec, array)
            raise InvalidInput(f"input '{spec.name}': expected values in [{low:g}, {high:g}], "
                               f"got values in [{float(lo):g}, {float(hi):g}]")
    else:
        _check_finite(spec, array)


def _check_finite(spec: TensorSpec, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input '{spec.name}': expected finite values, got NaN or Inf")


def _shape_text(shape: tuple) -> str:
    return "[" + ", ".join("N" if d == "N" else "*" if d == -1 else str(d) for d in shape) + "]"


def validate(config: ModelConfig, request: InferRequest, datatypes: dict[str, str]) -> int:
    """Validate request against config; returns the request's number of rows (its batch size)."""
    declared = {spec.name for spec in config.inputs}
    for name in request.inputs:
        if name not in declared:
            raise InvalidInput(f"unexpected input '{name}' for model '{config.name}': "
                               f"expected inputs {sorted(declared)}")
    for spec in config.inputs:
        if spec.name not in request.inputs:
            raise InvalidInput(f"input '{spec.name}' is missing: model '{config.name}' expects "
                               f"inputs {sorted(declared)}")
        _check_tensor(spec, request.inputs[spec.name], datatypes[spec.name])
    rows = {name: array.shape[0] for name, array in request.inputs.items()}
    if len(set(rows.values())) != 1:
        raise InvalidInput(f"inputs disagree on the batch dimension: {rows}")
    batch = next(iter(rows.values()))
    limit = config.batching.max_batch_size
    if batch > limit:
        raise InvalidInput(f"input '{config.inputs[0].name}': batch dimension {batch} exceeds the "
                           f"model's max_batch_size {limit}")
    known = {spec.name for spec in config.outputs}
    for name in request.outputs:
        if name not in known:
            raise InvalidInput(f"requested output '{name}' does not exist: expected one of {sorted(known)}")
    return batch
