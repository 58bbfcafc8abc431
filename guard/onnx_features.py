"""Expose a classifier's penultimate features as an extra ONNX output.

Feature-space detectors need the activations that feed the last layer. Exposing them as a graph
output lets ONE backend call return logits and features for the original and every variant.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from guard.errors import ConfigError

_LINEAR_OPS = ("Gemm", "MatMul")


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
        raise ConfigError(source, "features", f"a tensor produced by a node of the model", name)
    if name not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(target))
    return name
