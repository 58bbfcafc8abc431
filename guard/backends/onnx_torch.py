"""Run an ONNX classifier as a differentiable torch module: scans and attacks take input gradients
through it, and the torch backend serves with it.

A small interpreter for the op set the repository's classifiers use (FP32, FP16 and INT8 QDQ
exports of CNNs/MLPs). Why not a converter package: the QDQ ops must behave as fake-quant with
straight-through gradients, and a hundred lines here are easier to audit than a dependency.

Semantics and limits:
- Everything is computed in float32. FP16 initializers are widened exactly; `Cast` to FLOAT16
  rounds to half precision in the forward pass and passes gradients straight through, so outputs
  match ONNX Runtime to fp16 rounding (accumulation order differs).
- `QuantizeLinear` rounds and clamps to the zero point's integer range (round: straight-through
  gradient; clamp: zero gradient outside the range, like torch's fake-quant); `DequantizeLinear`
  is the affine map back. Integer tensors are carried as float32 holding integer values.
- Unsupported ops raise ConfigError naming the op, so a scan never silently runs a wrong graph.
- Shape-like inputs (Reshape's shape, Squeeze/Unsqueeze/ReduceMean axes, Clip bounds) are read
  once when the graph is built, so running on CUDA never copies a value back to the host mid-graph;
  they must be constants (a computed Reshape shape is still read per call, with a host copy).
  Ops that compute shapes at run time (Shape, Gather on shapes) are unsupported; exporters emit
  Flatten for the usual `x.flatten(1)`.
- `.to(device)` moves the graph's constants too; `folded()` precomputes every node whose inputs
  are all constants (e.g. weight DequantizeLinear) once, for serving (guard.backends.torch_runtime).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from guard.backends.onnx_ops import OPS as _OPS
from guard.backends.onnx_ops import Op
from guard.protocol.errors import ConfigError

# Integer dtypes of constant tensors -> their (min, max): a QuantizeLinear's zero point sets its range.
_NP_RANGES = {
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int16): (-32768, 32767),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
}


class _Node(NamedTuple):
    """What an op reads of its graph node, as plain Python values: the interpreter's loop then
    touches no protobuf objects, which keeps it cheap per call and traceable by torch.export."""

    name: str
    op_type: str
    input: tuple[str, ...]
    output: tuple[str, ...]


class _Step(NamedTuple):
    op: Op
    node: _Node
    attrs: dict[str, Any]


# Inputs that must be constants, read once into these attributes: (op type, input index) -> key.
_STATIC_INPUTS = {
    ("Reshape", 1): "_shape",
    ("Squeeze", 1): "_axes",
    ("Unsqueeze", 1): "_axes",
    ("ReduceMean", 1): "_axes",
    ("Clip", 1): "_min",
    ("Clip", 2): "_max",
}


def _constant_array(node) -> np.ndarray:
    attribute = node.attribute[0]
    if attribute.name == "value":
        return numpy_helper.to_array(attribute.t)
    return np.array(onnx.helper.get_attribute_value(attribute))  # value_float(s) / value_int(s)


class OnnxClassifier(torch.nn.Module):
    """`forward(x)` returns the logits output; `run(x, names)` returns any named tensors
    (e.g. the penultimate features). Parameters are frozen constants: scans optimise inputs."""

    def __init__(self, model: onnx.ModelProto, source: str = "model"):
        super().__init__()
        self.source = source
        self.graph = model.graph
        self._consts: dict[str, torch.Tensor] = {}
        self._ranges: dict[str, tuple[int, int]] = {}
        host: dict[str, np.ndarray] = {}  # exact values, for the shape-like inputs read once below
        for init in model.graph.initializer:
            host[init.name] = numpy_helper.to_array(init)
        for node in model.graph.node:  # Constant nodes become constants too
            if node.op_type == "Constant":
                host[node.output[0]] = _constant_array(node)
        for name, array in host.items():
            if array.dtype in _NP_RANGES:
                self._ranges[name] = _NP_RANGES[array.dtype]
            self._consts[name] = torch.from_numpy(np.array(array, dtype=np.float32))
        self.nodes = _topological(
            [n for n in model.graph.node if n.op_type != "Constant"],
            set(self._consts),
            {i.name for i in model.graph.input},
            source,
        )
        for node in self.nodes:
            if node.op_type not in _OPS:
                raise ConfigError(
                    source,
                    f"(graph node {node.name or node.output[0]})",
                    f"an op the scan interpreter supports ({', '.join(sorted(_OPS))})",
                    node.op_type,
                )
        self._steps = [self._step(node, host) for node in self.nodes]
        initializers = {i.name for i in model.graph.initializer}
        self.input_name = next(i.name for i in model.graph.input if i.name not in initializers)
        self.output_names = [o.name for o in model.graph.output]
        self.logits_name = self.output_names[0]

    def _step(self, node, host: dict[str, np.ndarray]) -> _Step:
        """A node with its attributes decoded once, and its constant shape-like inputs read."""
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = _Node(node.name, node.op_type, tuple(node.input), tuple(node.output))
        for index, name in enumerate(plain.input):
            key = _STATIC_INPUTS.get((node.op_type, index))
            if key is None or not name:
                continue
            if name not in host:
                if node.op_type == "Reshape":  # computed shape: read at run time, as it always was
                    continue
                raise ConfigError(
                    self.source,
                    f"(graph node {node.name or node.output[0]}).input[{index}]",
                    "a constant (initializer or Constant node)",
                    name,
                )
            value = host[name]
            attrs[key] = float(value) if key in ("_min", "_max") else [int(v) for v in value.reshape(-1)]
        if node.op_type == "QuantizeLinear":
            attrs["_range"] = self._ranges.get(plain.input[2], (0, 255)) if len(plain.input) > 2 else (0, 255)
        return _Step(_OPS[node.op_type], plain, attrs)

    @property
    def tensor_names(self) -> set[str]:
        """Every tensor `run` can return: the input, constants and each node's outputs."""
        return {self.input_name, *self._consts, *(name for step in self._steps for name in step.node.output)}

    def run(self, x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        values: dict[str, torch.Tensor] = dict(self._consts)
        values[self.input_name] = x.float()
        for op, node, attrs in self._steps:
            inputs = [values[name] if name else None for name in node.input]
            for name, value in zip(node.output, op(self, node, inputs, attrs)):
                values[name] = value
        return [values[name] for name in names]

    def _apply(self, fn, recurse: bool = True):
        """`.to(device)` moves the constants too: they are a plain dict, not registered buffers,
        because ONNX tensor names (with '.' and '/') are not valid buffer names."""
        self._consts = {name: fn(value) for name, value in self._consts.items()}
        return super()._apply(fn, recurse)

    def folded(self) -> OnnxClassifier:
        """A copy in which every node whose inputs are all constants (weight DequantizeLinear,
        Cast of FP16 initializers) has been computed once, for serving. Scans keep the unfolded
        graph: `perturbed` changes stored weights, which a folded copy has already consumed."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        consts, steps = dict(self._consts), []
        with torch.no_grad():
            for step in self._steps:
                if step.node.input and all(not name or name in consts for name in step.node.input):
                    inputs = [consts[name] if name else None for name in step.node.input]
                    consts.update(zip(step.node.output, step.op(copy, step.node, inputs, step.attrs)))
                else:
                    steps.append(step)
        copy._consts, copy._steps = consts, steps
        return copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, [self.logits_name])[0]

    def features(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self.run(x, [name])[0].flatten(1)

    def with_features(self, name: str | None = None) -> LogitsAndFeatures:
        """A module returning (logits, features) in one pass; features default to the classification
        head's input (guard.backends.onnx_graph.find_feature_tensor)."""
        from guard.backends.onnx_graph import find_feature_tensor

        return LogitsAndFeatures(self, name or find_feature_tensor(onnx.ModelProto(graph=self.graph)))

    def weight_names(self) -> list[str]:
        """Initializers that are weights or biases of Conv/Gemm/MatMul, looking through a
        DequantizeLinear to its integer tensor (scales and zero points are not weights)."""
        producers = {out: node for node in self.nodes for out in node.output}
        names = []
        for node in self.nodes:
            if node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            for name in node.input[1:]:
                source = producers.get(name)
                while source is not None and source.op_type in ("DequantizeLinear", "Cast", "Identity"):
                    name, source = source.input[0], producers.get(source.input[0])
                if name in self._consts and name not in names:
                    names.append(name)
        return names

    def perturbed(self, scale: float, gen: torch.Generator) -> OnnxClassifier:
        """A copy whose weights are multiplied by (1 + scale * N(0, 1)), element-wise. Quantized
        weights are perturbed as stored integers and re-rounded/clamped to their range."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy._consts = dict(self._consts)
        for name in self.weight_names():
            value = self._consts[name]
            noisy = value * (1 + scale * torch.randn(value.shape, generator=gen).to(value.device))
            if name in self._ranges:
                noisy = noisy.round().clamp(*self._ranges[name])
            copy._consts[name] = noisy
        return copy


class LogitsAndFeatures(torch.nn.Module):
    def __init__(self, classifier: OnnxClassifier, features: str):
        super().__init__()
        self.classifier, self.features_name = classifier, features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.classifier.run(x, [self.classifier.logits_name, self.features_name])
        return logits, features.flatten(1)


def _topological(nodes: list, constants: set[str], graph_inputs: set[str], source: str) -> list:
    """Nodes in an order where every input is computed first (some exporters, e.g. the FP16
    converter, append Cast nodes at the end of the list)."""
    ready, ordered, pending = set(constants) | graph_inputs, [], list(nodes)
    while pending:
        runnable = [n for n in pending if all(not name or name in ready for name in n.input)]
        if not runnable:
            raise ConfigError(
                source,
                "(graph)",
                "an acyclic graph whose node inputs are all produced",
                sorted({i for n in pending for i in n.input if i and i not in ready})[:3],
            )
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in runnable]
    return ordered


def load_onnx_classifier(path: Path) -> OnnxClassifier:
    model = onnx.load(str(path))
    return OnnxClassifier(model, str(path)).eval()


# --- op implementations: (module, node, inputs, attributes) -> list of outputs ---------------
