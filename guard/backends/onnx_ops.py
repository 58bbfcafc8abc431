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


_INTEGER_TYPES = (
    onnx.TensorProto.INT64,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
)


def _cast(m, node, inp, a):
    x = inp[0]
    if a["to"] == onnx.TensorProto.FLOAT16:  # round to half precision, straight-through gradient
        return [x + (x.half().float() - x).detach()]
    if a["to"] in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return [x]
    if a["to"] in _INTEGER_TYPES:  # integers ride as float32 holding integer values; ONNX truncates
        return [torch.trunc(x)]
    raise ConfigError(m.source, f"(graph node {node.name}).to", "a float or integer cast", a["to"])


def _ints(value: torch.Tensor) -> list[int]:
    """A shape-like tensor (float32 holding integers, INT64_MAX included) as Python ints."""
    return [int(v) for v in value.reshape(-1).tolist()]


def _constant_of_shape(m, node, inp, a):
    fill = a.get("value")
    value = float(onnx.numpy_helper.to_array(fill).reshape(-1)[0]) if fill is not None else 0.0
    return [torch.full(_ints(inp[0]), value, device=inp[0].device)]


def _slice(m, node, inp, a):
    x, starts, ends = inp[0], _ints(inp[1]), _ints(inp[2])
    axes = _ints(inp[3]) if len(inp) > 3 and inp[3] is not None else list(range(len(starts)))
    steps = _ints(inp[4]) if len(inp) > 4 and inp[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        size = x.shape[axis]
        start, end = start + size if start < 0 else start, end + size if end < 0 else end
        # ONNX clamps out-of-range bounds (exporters write INT64_MAX/MIN for "to the end"); a
        # negative step walks down from start to just above end (torch slicing walks only up).
        if step > 0:
            index = torch.arange(max(0, min(size, start)), max(0, min(size, end)), step, device=x.device)
        else:
            index = torch.arange(max(-1, min(size - 1, start)), max(-1, min(size - 1, end)), step, device=x.device)
        x = x.index_select(axis, index)
    return [x]


_PAD_MODES = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}


def _pad(m, node, inp, a):
    x, pads = inp[0], _ints(inp[1])
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in _PAD_MODES or (len(inp) > 3 and inp[3] is not None):
        raise ConfigError(m.source, f"(graph node {node.name}).mode", "constant, edge or reflect, no axes", mode)
    rank = x.dim()
    # ONNX: [begin of each axis..., end of each axis...]; F.pad: (begin, end) pairs from the last axis.
    order = [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])]
    while len(order) > 2 and order[-2:] == [0, 0]:  # unpadded leading axes (replicate pads 2-3 axes only)
        order = order[:-2]
    value = float(inp[2].reshape(-1)[0]) if len(inp) > 2 and inp[2] is not None and mode == "constant" else 0.0
    if mode == "constant":
        return [F.pad(x, order, mode="constant", value=value)]
    return [F.pad(x, order, mode=_PAD_MODES[mode])]


def _resize(m, node, inp, a):
    """Nearest-neighbour upsampling by whole scales (what detector exports' Upsample layers emit)."""
    x = inp[0]
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    transform = a.get("coordinate_transformation_mode", b"half_pixel")
    transform = transform.decode() if isinstance(transform, bytes) else transform
    nearest = a.get("nearest_mode", b"round_prefer_floor")
    nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
    scales = [float(s) for s in inp[2].reshape(-1).tolist()] if len(inp) > 2 and inp[2] is not None else []
    if len(inp) > 3 and inp[3] is not None:  # sizes instead of scales
        scales = [out / size for out, size in zip(_ints(inp[3]), x.shape)]
    spatial = scales[2:]
    # Asymmetric nearest samples floor(i / s) under nearest_mode floor, and under the default
    # round_prefer_floor too when every scale is 1 or 2 (fractions 0 and 1/2 round down alike).
    exact = mode == "nearest" and transform == "asymmetric" and scales[:2] == [1.0, 1.0]
    exact = exact and all(s.is_integer() and s >= 1 for s in spatial)
    exact = exact and (nearest == "floor" or all(s <= 2 for s in spatial))
    if not exact:
        raise ConfigError(
            m.source,
            f"(graph node {node.name})",
            "a nearest, asymmetric Resize by whole scales (floor, or scales of at most 2)",
            f"{mode}, {transform}, {nearest}, scales {scales}",
        )
    return [F.interpolate(x, scale_factor=spatial, mode="nearest")]


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
    # Detection heads and their exports (YOLO: padded max-pool, upsampling, box decoding).
    "Exp": lambda m, n, i, a: [torch.exp(i[0])],
    "ConstantOfShape": _constant_of_shape,
    "Slice": _slice,
    "Pad": _pad,
    "Resize": _resize,
}
