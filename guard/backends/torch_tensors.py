"""Tensors between the torch backend (guard.backends.torch_runtime) and the rest of the guard:
dtypes and v2 datatypes, feeds moved onto the device, and the signature of a saved program."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch

from guard.backends.onnx_torch import OnnxClassifier
from guard.protocol.errors import BackendError
from guard.protocol.spec import TensorSpec

# torch dtypes -> v2 datatypes, for a .pt2 program's signature (and back, for declared outputs).
DATATYPES = {
    torch.float32: "FP32",
    torch.float16: "FP16",
    torch.float64: "FP64",
    torch.uint8: "UINT8",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.bool: "BOOL",
}
TORCH_DTYPES = {name: dtype for dtype, name in DATATYPES.items()}
FLOATS = ("FP16", "FP32", "FP64")


class NamedOutputs(torch.nn.Module):
    """The interpreter returning a fixed set of named tensors, as torch.export traces it."""

    def __init__(self, net: OnnxClassifier, names: list[str]):
        super().__init__()
        self.net, self.names = net, names

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.net.run(x, self.names)))


def on_device(value: Any, device: torch.device) -> torch.Tensor:
    """A feed on the backend's device: a no-op for a tensor already there (the pipeline's case)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    array = np.ascontiguousarray(value)
    if not array.flags.writeable:  # decoded requests are read-only views; torch wants to own writable memory
        array = array.copy()
    return torch.from_numpy(array).to(device)


def the_input(feeds: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in feeds:
        raise BackendError(f"missing input {name!r} (got {sorted(feeds)})")
    return feeds[name]


def ordered(feeds: dict[str, torch.Tensor], names: list[str]) -> list[torch.Tensor]:
    return [the_input(feeds, name) for name in names]


def spec_of(name: str, value: Any) -> TensorSpec:
    dims = [d if isinstance(d, int) else -1 for d in value.shape[1:]]
    return TensorSpec(name, DATATYPES.get(value.dtype, "UNKNOWN"), tuple(dims))


def inferred_shape(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    """An internal tensor's item shape from ONNX shape inference (() when it cannot tell)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - best effort: the features' shape is informational
        return ()
    for value in inferred.graph.value_info:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])
    return ()
