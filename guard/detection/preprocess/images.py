"""Encoded images as clients send them (BYTES: one JPEG or PNG per row, any size) -> the model's
FP32 N x C x H x W.

The whole batch is decoded at once: JPEGs with TorchCodec's `decode_jpeg` on the guard's device
(nvJPEG on CUDA, libjpeg-turbo on the CPU), anything else with its `decode_image` on the CPU.
TorchCodec, not torchvision.io: torchvision deprecated its image decoders (0.29) in its favour. Each
image's header is read first (Pillow opens it without decoding): an image that is not a JPEG or
PNG, or whose pixel count passes `max_pixels` (a decompression bomb is a few KB that decode to
gigabytes), fails its own request with INVALID_ARGUMENT and the rest of the batch is served.

Images are then brought to height x width as `resize` says ("stretch", "letterbox" with
`pad_value`, or "center-crop" to `resize_shorter`: guard.detection.preprocess.resizing, the one
copy of the rule, antialiased when shrinking) and scaled to [0, 1]: the guarded tensor squeezers
and blends work on. `finish` normalises with mean and std. `resize_shorter` defaults to
max(height, width), the least cropping, and must be at least that so the crop never leaves the image.
"""

from __future__ import annotations

import io
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from guard.detection.preprocess.base import Prepared
from guard.detection.preprocess.normalised import NormalisedImages
from guard.detection.preprocess.resizing import MODES, fit
from guard.protocol.settings import Param
from guard.protocol.spec import TensorSpec

FORMATS = {"JPEG", "PNG"}


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

    def __init__(self, source: TensorSpec, output: str, **params: Any):
        super().__init__(source, output, **params)
        if self.resize not in MODES:
            raise ValueError(f"preprocess.resize: {', '.join(MODES)}, got {self.resize!r}")
        if self.resize != "center-crop" and self.resize_shorter:
            raise ValueError(f'preprocess.resize_shorter: only with resize = "center-crop", not {self.resize!r}')
        if self.resize == "center-crop":
            least = max(self.height, self.width)
            self.resize_shorter = self.resize_shorter or least
            if self.resize_shorter < least:
                raise ValueError(
                    f"preprocess.resize_shorter: at least max(height, width) = {least}, so the "
                    f"{self.height}x{self.width} crop stays inside the image, got {self.resize_shorter}"
                )
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
                        one = decode_jpeg(buffers[i], mode=ImageReadMode.RGB, device=device)
                        decoded[i] = cast(torch.Tensor, one)  # one body in, one image out
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
        return fit(x, self.resize, self.height, self.width, self.pad_value, self.resize_shorter)[0]

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
