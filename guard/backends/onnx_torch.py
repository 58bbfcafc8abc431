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
"""

from __future__ import annotations

from pathlib import Path

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
    return x + (torch.round(x) - x).detach()


def _per_axis(param: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """Broadcast a per-channel scale/zero point along `axis` of `like` (scalars pass through)."""
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * like.dim()
    shape[axis % like.dim()] = -1
    return param.reshape(shape)


class OnnxClassifier(torch.nn.Module):
    """`forward(x)` returns the logits output; `run(x, names)` returns any named tensors
    (e.g. the penultimate features). Parameters are frozen buffers: scans optimise inputs."""

    def __init__(self, model: onnx.ModelProto, source: str = "model"):
        super().__init__()
        self.source = source
        self.graph = model.graph
        self._consts: dict[str, torch.Tensor] = {}
        self._ranges: dict[str, tuple[int, int]] = {}
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype in _NP_RANGES:
                self._ranges[init.name] = _NP_RANGES[array.dtype]
            self._consts[init.name] = torch.from_numpy(np.array(array, dtype=np.float32))
        for node in model.graph.node:  # Constant nodes become constants too
            if node.op_type == "Constant":
                array = numpy_helper.to_array(node.attribute[0].t)
                self._consts[node.output[0]] = torch.from_numpy(np.array(array, dtype=np.float32))
        self.nodes = _topological([n for n in model.graph.node if n.op_type != "Constant"], set(self._consts),
                                  {i.name for i in model.graph.input}, source)
        for node in self.nodes:
            if node.op_type not in _OPS:
                raise ConfigError(source, f"(graph node {node.name or node.output[0]})",
                                  f"an op the scan interpreter supports ({', '.join(sorted(_OPS))})", node.op_type)
        initializers = {i.name for i in model.graph.initializer}
        self.input_name = next(i.name for i in model.graph.input if i.name not in initializers)
        self.output_names = [o.name for o in model.graph.output]
        self.logits_name = self.output_names[0]

    def run(self, x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        values: dict[str, torch.Tensor] = dict(self._consts)
        values[self.input_name] = x.float()
        for node in self.nodes:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            inputs = [values[name] if name else None for name in node.input]
            outputs = _OPS[node.op_type](self, node, inputs, attrs)
            for name, value in zip(node.output, outputs):
                values[name] = value
        return [values[name] for name in names]

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
            noisy = value * (1 + scale * torch.randn(value.shape, generator=gen))
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
    axis = axis % x.dim() if x.dim() else 0
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


def _reshape(m, node, inp, a):
    x, shape = inp[0], [int(s) for s in inp[1].tolist()]
    shape = [x.shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _quantize(m, node, inp, a):
    x, scale = inp[0], inp[1]
    zero = inp[2] if len(inp) > 2 and inp[2] is not None else torch.zeros(())
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
}
