"""Encoded images as clients send them (BYTES: one JPEG or PNG per row, any size) -> the model's
FP32 N x C x H x W.

The whole batch is decoded at once: JPEGs with TorchCodec's `decode_jpeg` on the guard's device
(nvJPEG on CUDA, libjpeg-turbo on the CPU), anything else with its `decode_image` on the CPU.
TorchCodec, not torchvision.io: torchvision deprecated its image decoders (0.29) in its favour. Each
image's header is read first (Pillow opens it without decoding): an image that is not a JPEG or
PNG, or whose pixel count passes `max_pixels` (a decompression bomb is a few KB that decode to
gigabytes), fails its own request with INVALID_ARGUMENT and the rest of the batch is served.

Images are then brought to height x width by `resize`, and scaled to [0, 1]: the guarded tensor
squeezers and blends work on. `finish` normalises with mean and std.

- "stretch": resized to height x width, whatever their aspect ratio.
- "letterbox": fitted inside height x width with their aspect kept, centred, the rest padded with
  `pad_value` (what YOLO-family detectors were trained on).
- "center-crop": the shorter side resized to `resize_shorter` with the aspect kept, then the
  centre height x width cut out (torchvision's `Resize(S)` + `CenterCrop`, the evaluation
  transform ImageNet classifiers were trained for: MobileNetV2's weights expect S = 256 and 224).
  `resize_shorter` defaults to max(height, width), the least cropping, and must be at least that
  so the crop never leaves the image. Sizes and offsets follow torchvision's arithmetic (the longer
  side truncated, the offsets rounded), so the guard cuts the same pixels torchvision does, and the
  resized image is rounded to 8-bit levels, as torchvision's Resize leaves a uint8 image and Pillow
  (what such weights were trained with) any image: otherwise the top-1 of images whose two best
  classes are nearly tied can differ from the reference's.

All three use the one `resize` below: bilinear, antialiased when shrinking (bilinear over the whole
footprint). A camera frame shrunk to a detector's 416 pixels without it aliases fine texture, and
YOLOv3-tiny's person scores on a 1080p street photo drop from 0.79 to 0.68 (models/yolov3_tiny.py's
card).
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from guard.detection.preprocess.base import Prepared
from guard.detection.preprocess.normalised import NormalisedImages
from guard.protocol.settings import Param
from guard.protocol.spec import TensorSpec

FORMATS = {"JPEG", "PNG"}
RESIZE_MODES = ("stretch", "letterbox", "center-crop")


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, half-pixel centres, antialiased when shrinking."""
    shrinking = height < x.shape[-2] or width < x.shape[-1]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)


def letterbox_geometry(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left): the size an image keeps inside the target with its aspect ratio,
    and where it sits (centred)."""
    scale = min(target_h / height, target_w / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return new_h, new_w, (target_h - new_h) // 2, (target_w - new_w) // 2


def center_crop_geometry(height: int, width: int, shorter: int, target_h: int, target_w: int
                         ) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left): the size an image takes with its shorter side resized to `shorter`
    and the aspect kept, and where the centred target_h x target_w crop starts in it. torchvision's
    arithmetic (transforms.v2.functional: the longer side truncated, the offsets rounded half to
    even), so both cut the same pixels."""
    if height <= width:
        new_h, new_w = shorter, int(shorter * width / height)
    else:
        new_h, new_w = int(shorter * height / width), shorter
    return new_h, new_w, int(round((new_h - target_h) / 2.0)), int(round((new_w - target_w) / 2.0))


def center_crop(x: torch.Tensor, shorter: int, height: int, width: int, eight_bit: bool = False) -> torch.Tensor:
    """float [N, C, h, w] in [0, 1] -> [N, C, height, width]: the shorter side resized to `shorter`,
    then the centre cut out (torchvision's Resize(shorter) + CenterCrop((height, width))). With
    `eight_bit` (x holds 8-bit pixels) the resized image is rounded back to 8-bit levels, as
    torchvision's Resize leaves a uint8 image and Pillow's resize any image."""
    new_h, new_w, top, left = center_crop_geometry(*x.shape[-2:], shorter, height, width)
    if (new_h, new_w) != tuple(x.shape[-2:]):
        x = resize(x, new_h, new_w)
        if eight_bit:
            x = x.mul(255.0).round_().div_(255.0)
    return x[..., top:top + height, left:left + width]


class ImagesPreprocessor(NormalisedImages):
    kind = "images"
    datatypes = ("BYTES",)
    ranks = (0, 1)
    layout = "one encoded image per row"
    parameters = {
        **NormalisedImages.parameters,
        "resize": Param(str, default="stretch"),
        "pad_value": Param(float, 0.0, 1.0, default=0.5),
        # 0: not set (center-crop then takes max(height, width)); a Param needs an in-range default.
        "resize_shorter": Param(int, 0, 8192, default=0),
        "max_pixels": Param(int, 1, 2**31 - 1, default=40_000_000),
    }
    resize: str
    pad_value: float
    resize_shorter: int
    max_pixels: int

    def __init__(self, source: TensorSpec, output: str, **params):
        super().__init__(source, output, **params)
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"preprocess.resize: {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.resize != "center-crop" and self.resize_shorter:
            raise ValueError(f"preprocess.resize_shorter: only with resize = \"center-crop\", not {self.resize!r}")
        if self.resize == "center-crop":
            least = max(self.height, self.width)
            self.resize_shorter = self.resize_shorter or least
            if self.resize_shorter < least:
                raise ValueError(f"preprocess.resize_shorter: at least max(height, width) = {least}, so the "
                                 f"{self.height}x{self.width} crop stays inside the image, got {self.resize_shorter}")
        if source.shape not in ((), (1,)):
            raise ValueError(f"input '{source.name}': one encoded image per row (shape [] or [1])")

    def _check(self, data: bytes) -> str | None:
        """What is wrong with an encoded image, from its header alone; None when it may be decoded."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types; all mean "not an image we take"
            return f"not a JPEG or PNG image ({type(exc).__name__})"
        if kind not in FORMATS:
            return f"a {kind} image; JPEG or PNG expected"
        if width * height > self.max_pixels:
            return f"{width}x{height} pixels, over the model's limit of {self.max_pixels}"
        return None

    def _decode(self, items: list[tuple[int, bytes]], device: torch.device) -> dict[int, torch.Tensor | str]:
        # Lazy: TorchCodec (and FFmpeg's libraries) only load in a process serving image models.
        from torchcodec.decoders import ImageReadMode, decode_image, decode_jpeg

        decoded: dict[int, torch.Tensor | str] = {}
        buffers = dict(items)
        jpegs = [i for i, data in items if data[:2] == b"\xff\xd8"]
        if jpegs:
            try:
                images = decode_jpeg([buffers[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
                decoded.update(zip(jpegs, images))
            except RuntimeError:  # one corrupt body fails the batch call: find it image by image
                for i in jpegs:
                    try:
                        decoded[i] = decode_jpeg(buffers[i], mode=ImageReadMode.RGB, device=device)
                    except RuntimeError as exc:
                        decoded[i] = f"corrupt JPEG ({str(exc).splitlines()[0][:80]})"
        for i, _ in items:
            if i not in decoded:
                try:
                    decoded[i] = decode_image(buffers[i], mode=ImageReadMode.RGB).to(device)
                except RuntimeError as exc:
                    decoded[i] = f"corrupt image ({str(exc).splitlines()[0][:80]})"
        return decoded

    def _fit(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [3, h, w] -> float [3, height, width] in [0, 1]."""
        x = image.unsqueeze(0).float().div_(255.0)
        h, w = x.shape[-2:]
        if self.resize == "stretch":
            if (h, w) != (self.height, self.width):
                x = resize(x, self.height, self.width)
            return x[0].clamp_(0.0, 1.0)
        if self.resize == "center-crop":
            # Rounded to 8 bits like the transform it reproduces: on 126 real frames and photos MobileNetV2's
            # top-1 then matches torchvision's on 124, unrounded on 119 (near-ties; models/mobilenet_v2.py).
            x = center_crop(x, self.resize_shorter, self.height, self.width, eight_bit=True)
            return x[0].clamp_(0.0, 1.0)
        new_h, new_w, top, left = letterbox_geometry(h, w, self.height, self.width)
        if (new_h, new_w) != (h, w):
            x = resize(x, new_h, new_w)
        out = torch.full((3, self.height, self.width), self.pad_value, device=x.device)
        out[:, top:top + new_h, left:left + new_w] = x[0].clamp_(0.0, 1.0)
        return out

    def prepare(self, arrays: list[np.ndarray], device: torch.device) -> Prepared:
        failed: dict[int, str] = {}
        items: list[tuple[int, int, bytes]] = []  # (request, row, bytes)
        for request, array in enumerate(arrays):
            for row, data in enumerate(np.asarray(array, dtype=object).reshape(len(array), -1)[:, 0]):
                data = bytes(data)
                problem = self._check(data)
                if problem is not None:
                    failed.setdefault(request, f"input '{self.source.name}' row {row}: {problem}")
                items.append((request, row, data))
        keep = [(k, data) for k, (request, _, data) in enumerate(items) if request not in failed]
        decoded = self._decode(keep, device)
        rows = []
        for k, (request, row, _) in enumerate(items):
            if request in failed:
                continue
            image = decoded[k]
            if isinstance(image, str):
                failed[request] = f"input '{self.source.name}' row {row}: {image}"
                continue
            rows.append((request, self._fit(image)))
        good = [x for request, x in rows if request not in failed]
        return Prepared(torch.stack(good) if good else None, failed)
