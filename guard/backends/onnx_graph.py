"""Reading and editing ONNX graphs: the tensors a model declares, and its penultimate features
exposed as an extra output.

Feature-space detectors need the activations that feed the last layer. Exposing them as a graph
output lets ONE backend call return logits and features for the original and every variant.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from guard.protocol.errors import ConfigError
from guard.protocol.spec import TensorSpec

_LINEAR_OPS = ("Gemm", "MatMul")

# ONNX TensorProto element types -> v2 datatypes, for checking a config against its model.
_ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}


def onnx_signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX model; shapes exclude the batch dimension, -1 = symbolic."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def specs(values) -> list[TensorSpec]:
        result = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            result.append(TensorSpec(value.name, _ONNX_TYPES.get(tensor.elem_type, "UNKNOWN"), tuple(dims[1:])))
        return result

    return specs(model.graph.input), specs(model.graph.output)


def find_feature_tensor(model: onnx.ModelProto) -> str:
    """The input of the last Gemm/MatMul (nodes are topologically sorted), i.e. what the
    classification head reads. In a QDQ-quantized model that is the dequantized activation."""
    weights = {init.name for init in model.graph.initializer}
    for node in reversed(model.graph.node):
        if node.op_type in _LINEAR_OPS:
            candidates = [name for name in node.input if name and name not in weights]
            if candidates:
                return candidates[0]
    raise ConfigError("model", "(graph)", "a Gemm or MatMul classification head to read features from")


def expose_features(source: Path, target: Path, tensor: str | None = None) -> str:
    """Write `source` with `tensor` (default: find_feature_tensor) added as a graph output to
    `target`; returns the output's name. Idempotent when the output already exists."""
    model = onnx.load(str(source))
    name = tensor or find_feature_tensor(model)
    produced = {out for node in model.graph.node for out in node.output}
    if name not in produced:
        raise ConfigError(source, "features", "a tensor produced by a node of the model", name)
    if name not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(target))
    return name
