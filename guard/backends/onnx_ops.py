"""The ONNX ops the torch interpreter (guard.backends.onnx_torch) runs: one function per op type,
`(module, node, inputs, attributes) -> outputs`, registered in OPS. Semantics are the interpreter's
(see its docstring): float32 throughout, QDQ as fake-quant with straight-through gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
import torch
import torch.nn.functional as F

from guard.protocol.errors import ConfigError

Op = Callable[[Any, Any, list[Any], dict[str, Any]], list[torch.Tensor]]
"""(the interpreter module, the graph node, its inputs (None for an omitted one), its attributes) -> outputs."""


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
    return [
        conv(
            x,
            w,
            b,
            stride=a.get("strides", 1),
            padding=pads[:half],
            dilation=a.get("dilations", 1),
            groups=a.get("group", 1),
        )
    ]


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
        return [
            F.avg_pool2d(
                x, kernel, strides, pads[:half], bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0))
            )
        ]

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


OPS: dict[str, Op] = {
    "Conv": _conv,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "Gemm": _gemm,
    "MatMul": lambda m, n, i, a: [i[0] @ i[1]],
    "Add": lambda m, n, i, a: [i[0] + i[1]],
    "Sub": lambda m, n, i, a: [i[0] - i[1]],
    "Mul": lambda m, n, i, a: [i[0] * i[1]],
    "Div": lambda m, n, i, a: [i[0] / i[1]],
    "Relu": lambda m, n, i, a: [F.relu(i[0])],
    "LeakyRelu": lambda m, n, i, a: [F.leaky_relu(i[0], a.get("alpha", 0.01))],
    "Sigmoid": lambda m, n, i, a: [torch.sigmoid(i[0])],
    "Tanh": lambda m, n, i, a: [torch.tanh(i[0])],
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Identity": lambda m, n, i, a: [i[0]],
    "Dropout": lambda m, n, i, a: [i[0]],
    "Softmax": _softmax,
    "GlobalAveragePool": lambda m, n, i, a: [i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True)],
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "Cast": _cast,
    # Beyond the demo models: what unfused exports of common CNN classifiers use (torchvision's
    # mobilenet_v3 uses HardSigmoid/HardSwish; BatchNormalization where it was not folded).
    "BatchNormalization": _batch_norm,
    "Clip": _clip,
    "Concat": lambda m, n, i, a: [torch.cat(i, dim=a["axis"])],
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "ReduceMean": _reduce_mean,
    "HardSigmoid": lambda m, n, i, a: [torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1)],
    "HardSwish": lambda m, n, i, a: [F.hardswish(i[0])],
}
