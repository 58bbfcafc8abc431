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
from typing import NamedTuple

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from guard.protocol.errors import ConfigError

# ONNX element types of the integer tensors QDQ produces -> their (min, max).
_INT_RANGES = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
               onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767),
               onnx.TensorProto.INT32: (-2**31, 2**31 - 1)}
_NP_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127), np.dtype(np.uint16): (0, 65535),
              np.dtype(np.int16): (-32768, 32767), np.dtype(np.int32): (-2**31, 2**31 - 1)}


def _straight_round(x: torch.Tensor) -> torch.Tensor:
    if not x.requires_grad:  # serving: the same values, two kernels fewer per QuantizeLinear
        return torch.round(x)
    return x + (torch.round(x) - x).detach()


def _per_axis(param: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """Broadcast a per-channel scale/zero point along `axis` of `like` (scalars pass through)."""
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * like.dim()
    shape[axis % like.dim()] = -1
    return param.reshape(shape)


class _Node(NamedTuple):
    """What an op reads of its graph node, as plain Python values: the interpreter's loop then
    touches no protobuf objects, which keeps it cheap per call and traceable by torch.export."""

    name: str
    op_type: str
    input: tuple[str, ...]
    output: tuple[str, ...]


class _Step(NamedTuple):
    op: object
    node: _Node
    attrs: dict


# Inputs that must be constants, read once into these attributes: (op type, input index) -> key.
_STATIC_INPUTS = {("Reshape", 1): "_shape", ("Squeeze", 1): "_axes", ("Unsqueeze", 1): "_axes",
                  ("ReduceMean", 1): "_axes", ("Clip", 1): "_min", ("Clip", 2): "_max"}


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
        self.nodes = _topological([n for n in model.graph.node if n.op_type != "Constant"], set(self._consts),
                                  {i.name for i in model.graph.input}, source)
        for node in self.nodes:
            if node.op_type not in _OPS:
                raise ConfigError(source, f"(graph node {node.name or node.output[0]})",
                                  f"an op the scan interpreter supports ({', '.join(sorted(_OPS))})", node.op_type)
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
                raise ConfigError(self.source, f"(graph node {node.name or node.output[0]}).input[{index}]",
                                  "a constant (initializer or Constant node)", name)
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
            raise ConfigError(source, "(graph)", "an acyclic graph whose node inputs are all produced",
                              sorted({i for n in pending for i in n.input if i and i not in ready})[:3])
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in runnable]
    return ordered


def load_onnx_classifier(path: Path) -> OnnxClassifier:
    model = onnx.load(str(path))
    return OnnxClassifier(model, str(path)).eval()


# --- op implementations: (module, node, inputs, attributes) -> list of outputs ---------------


def _conv(m, node, inp, a):
    x, w, b = inp[0], inp[1], inp[2] if len(inp) > 2 else None
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ConfigError(m.source, f"(graph node {node.name}).auto_pad", "NOTSET (explicit pads)", a["auto_pad"])
    pads = a.get("pads", [0] * (2 * (x.dim() - 2)))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:  # asymmetric padding: pad explicitly, then convolve unpadded
        x = F.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
        pads = [0] * len(pads)
    conv = F.conv2d if x.dim() == 4 else F.conv1d
    return [conv(x, w, b, stride=a.get("strides", 1), padding=pads[:half], dilation=a.get("dilations", 1),
                 groups=a.get("group", 1))]


def _pool(kind):
    def run(m, node, inp, a):
        x = inp[0]
        pads = a.get("pads", [0] * (2 * (x.dim() - 2)))
        half = len(pads) // 2
        kernel, strides = a["kernel_shape"], a.get("strides", [1] * half)
        if pads[:half] != pads[half:]:
            raise ConfigError(m.source, f"(graph node {node.name}).pads", "symmetric pads", pads)
        if kind == "max":
            return [F.max_pool2d(x, kernel, strides, pads[:half], a.get("dilations", 1), bool(a.get("ceil_mode", 0)))]
        return [F.avg_pool2d(x, kernel, strides, pads[:half], bool(a.get("ceil_mode", 0)),
                             bool(a.get("count_include_pad", 0)))]
    return run


def _gemm(m, node, inp, a):
    x, w = inp[0], inp[1]
    x = x.transpose(0, 1) if a.get("transA", 0) else x
    w = w.transpose(0, 1) if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    if len(inp) > 2 and inp[2] is not None:
        y = y + a.get("beta", 1.0) * inp[2]
    return [y]


def _flatten(m, node, inp, a):
    x, axis = inp[0], a.get("axis", 1)
    axis = axis % x.dim() if x.dim() and axis < 0 else axis
    # flatten() rather than reshape(prod(shape[:axis]), -1): keeps a symbolic batch dimension
    # symbolic when the graph is traced (torch.export, torch.compile).
    if axis == 0:
        return [x.reshape(1, -1)]
    if axis >= x.dim():
        return [x.flatten().unsqueeze(1)]
    return [x.flatten(axis).flatten(0, axis - 1)]


def _reshape(m, node, inp, a):
    x = inp[0]
    shape = a["_shape"] if "_shape" in a else [int(s) for s in inp[1].tolist()]
    shape = [x.shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _quantize(m, node, inp, a):
    x, scale = inp[0], inp[1]
    zero = inp[2] if len(inp) > 2 and inp[2] is not None else torch.zeros(())
    if "_range" in a:
        low, high = a["_range"]
    else:
        low, high = m._ranges.get(node.input[2], (0, 255)) if len(node.input) > 2 else (0, 255)
    axis = a.get("axis", 1)
    q = _straight_round(x / _per_axis(scale, x, axis)) + _per_axis(zero, x, axis)
    return [q.clamp(low, high)]


def _dequantize(m, node, inp, a):
    x, scale = inp[0], inp[1]
    zero = inp[2] if len(inp) > 2 and inp[2] is not None else torch.zeros(())
    axis = a.get("axis", 1)
    return [(x - _per_axis(zero, x, axis)) * _per_axis(scale, x, axis)]


def _cast(m, node, inp, a):
    x = inp[0]
    if a["to"] == onnx.TensorProto.FLOAT16:  # round to half precision, straight-through gradient
        return [x + (x.half().float() - x).detach()]
    if a["to"] in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return [x]
    raise ConfigError(m.source, f"(graph node {node.name}).to", "a float cast", a["to"])


def _softmax(m, node, inp, a):
    return [torch.softmax(inp[0], dim=a.get("axis", -1))]


def _batch_norm(m, node, inp, a):
    x, scale, bias, mean, var = inp[:5]
    return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))]


def _clip(m, node, inp, a):
    low, high = a.get("_min", a.get("min")), a.get("_max", a.get("max"))
    return [torch.clamp(inp[0], low, high)]


def _axes(a: dict) -> list[int] | None:
    """Axes from the input (opset >= 13/18, read once into `_axes`) or the older attribute."""
    axes = a.get("_axes", a.get("axes"))
    return None if axes is None or len(axes) == 0 else list(axes)


def _squeeze(m, node, inp, a):
    axes = _axes(a)
    return [inp[0].squeeze() if axes is None else inp[0].squeeze(tuple(axes))]


def _unsqueeze(m, node, inp, a):
    x = inp[0]
    rank = x.dim() + len(_axes(a))
    for axis in sorted(axis % rank for axis in _axes(a)):
        x = x.unsqueeze(axis)
    return [x]


def _reduce_mean(m, node, inp, a):
    axes, keep = _axes(a), bool(a.get("keepdims", 1))
    if axes is None:
        if a.get("noop_with_empty_axes", 0):
            return [inp[0]]
        axes = list(range(inp[0].dim()))
    return [inp[0].mean(dim=tuple(axes), keepdim=keep)]


def _transpose(m, node, inp, a):
    return [inp[0].permute(a.get("perm", list(reversed(range(inp[0].dim())))))]


_OPS = {
    "Conv": _conv, "MaxPool": _pool("max"), "AveragePool": _pool("avg"), "Gemm": _gemm,
    "MatMul": lambda m, n, i, a: [i[0] @ i[1]], "Add": lambda m, n, i, a: [i[0] + i[1]],
    "Sub": lambda m, n, i, a: [i[0] - i[1]], "Mul": lambda m, n, i, a: [i[0] * i[1]],
    "Div": lambda m, n, i, a: [i[0] / i[1]], "Relu": lambda m, n, i, a: [F.relu(i[0])],
    "LeakyRelu": lambda m, n, i, a: [F.leaky_relu(i[0], a.get("alpha", 0.01))],
    "Sigmoid": lambda m, n, i, a: [torch.sigmoid(i[0])], "Tanh": lambda m, n, i, a: [torch.tanh(i[0])],
    "Flatten": _flatten, "Reshape": _reshape, "Identity": lambda m, n, i, a: [i[0]],
    "Dropout": lambda m, n, i, a: [i[0]], "Softmax": _softmax,
    "GlobalAveragePool": lambda m, n, i, a: [i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True)],
    "QuantizeLinear": _quantize, "DequantizeLinear": _dequantize, "Cast": _cast,
    # Beyond the demo models: what unfused exports of common CNN classifiers use (torchvision's
    # mobilenet_v3 uses HardSigmoid/HardSwish; BatchNormalization where it was not folded).
    "BatchNormalization": _batch_norm, "Clip": _clip, "Concat": lambda m, n, i, a: [torch.cat(i, dim=a["axis"])],
    "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "ReduceMean": _reduce_mean,
    "HardSigmoid": lambda m, n, i, a: [torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1)],
    "HardSwish": lambda m, n, i, a: [F.hardswish(i[0])],
}
