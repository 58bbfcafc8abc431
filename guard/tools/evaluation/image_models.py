"""A plan's image model: a model directory (config.toml + model.onnx, as `guard serve --repository`
loads it) whose client input is BYTES, one encoded image per request, turned into the model's
tensor by the `images` preprocessor. Its config decides how the evaluation feeds and judges it: the
preprocessor's height, width and resize give the frame the attack perturbs, the output kind
(classification or detection, with its [boxes] settings) how an answer is read.

Frames go to the gateway at the model's input size, already brought there by the gateway's own
resize (guard.detection.preprocess.resizing.fit), and as lossless PNG: the gateway's resize of an
image that already has the model's size leaves it unchanged, so the pixels the attack chose are the
pixels the model sees. A center-crop model is sent the square its resize makes before the crop
(the shorter side at resize_shorter, the centre kept): the gateway resizes nothing and cuts the same
centre the attack differentiates through (ServedInput's crop), and a wider frame's sides, which the
crop would drop anyway, are left out. JPEG would re-quantise them and undo most of a few-level perturbation, so the
clean frames go the same way, and clean and attacked frames differ only by the attack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from guard.detection.boxes import Boxes, BoxSettings, decode
from guard.detection.detectors.base import DETECTION
from guard.detection.preprocess.images import ImagesPreprocessor
from guard.detection.preprocess.resizing import center_crop, center_crop_geometry, fit
from guard.protocol.settings import TableReader
from guard.serving.model_config import ModelConfig, load_model_config
from guard.tools.clean_data import encode_png

if TYPE_CHECKING:
    from guard.backends.onnx_torch import OnnxClassifier

LEVELS = 255
"""8-bit images: what a PNG frame can carry."""


class ServedInput(torch.nn.Module):
    """The served model as torch on the [0, 1] image the detectors examine: the preprocessor's
    mean/std normalisation, then the model's ONNX run as torch, returning its logits_output (raw
    boxes for a detection model)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        net: OnnxClassifier,
        mean: list[float],
        std: list[float],
        output: str,
        crop: tuple[int, int, int, int] | None = None,
    ):
        super().__init__()
        self.net, self.output, self.crop = net, output, crop
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop is not None:  # (top, left, height, width): the gateway's centre crop of the view
            top, left, height, width = self.crop
            x = x[..., top : top + height, left : left + width].contiguous()
        return self.net.run((x - self.mean) / self.std, [self.output])[0]


@dataclass(frozen=True)
class ImageModel:
    directory: Path
    config: ModelConfig
    preprocessor: ImagesPreprocessor

    @property
    def output_kind(self) -> str:
        return self.config.detection.output_kind

    @property
    def boxes(self) -> BoxSettings | None:
        return self.config.detection.boxes

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.config.outputs[0].shape

    @property
    def classes(self) -> int:
        """Classes of a classifier's logits, or of a yolo detector's class scores."""
        return self.output_shape[-1] - (5 if self.output_kind == DETECTION else 0)

    @property
    def warmup(self) -> int:
        """Frames a camera's baseline warms up on before it judges ([cameras.baseline]); 0 without."""
        baseline = self.config.cameras.baseline
        return 0 if baseline is None else baseline.warmup

    @property
    def view_size(self) -> tuple[int, int]:
        """(height, width) of the frames sent: the model's input, or a center-crop's square."""
        p = self.preprocessor
        if p.resize == "center-crop":
            side = p.resize_shorter or max(p.height, p.width)
            return side, side
        return p.height, p.width

    def views(self, frames: tuple[np.ndarray, ...] | list[np.ndarray]) -> np.ndarray:
        """RGB uint8 frames of any size -> uint8 [N, h, w, 3] at `view_size`, by the gateway's own
        resize (rounded to 8 bits: what a PNG carries)."""
        p = self.preprocessor
        out = []
        for frame in frames:
            x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float().div_(255.0)
            if p.resize == "center-crop":
                side = self.view_size[0]
                x = center_crop(x, side, side, side, eight_bit=True).clamp(0.0, 1.0)
            else:
                x = fit(x, p.resize, p.height, p.width, p.pad_value, p.resize_shorter)
            out.append(x[0].mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
        return np.stack(out)

    @staticmethod
    def encode(views: np.ndarray) -> list[bytes]:
        """uint8 [N, H, W, 3] -> one PNG per frame, as the requests carry them."""
        return [encode_png(v) for v in views]

    @staticmethod
    def as_tensor(views: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1] on the 8-bit grid."""
        return torch.from_numpy(np.ascontiguousarray(views)).permute(0, 3, 1, 2).float().div(255.0)

    @staticmethod
    def as_views(x: torch.Tensor) -> np.ndarray:
        return x.detach().mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def torch_model(self) -> ServedInput:
        from guard.backends.onnx_torch import load_onnx_classifier

        net = load_onnx_classifier(self.model_file).eval()
        p = self.preprocessor
        crop = None
        if p.resize == "center-crop":
            side = self.view_size[0]
            _, _, top, left = center_crop_geometry(side, side, side, p.height, p.width)
            crop = (top, left, p.height, p.width)
        return ServedInput(net, p.mean, p.std, self.config.detection.logits_output, crop).eval()

    @property
    def model_file(self) -> Path:
        return self.config.model_file or self.directory / "model.onnx"

    def raw(self, flat: np.ndarray) -> np.ndarray:
        """The gateway's answers (one flat output row per request) -> [N, *output shape]."""
        return np.asarray(flat, np.float32).reshape(len(flat), *self.output_shape)

    def detections(self, raw: np.ndarray | torch.Tensor) -> list[Boxes]:
        """Boxes per frame, decoded with the served [boxes] settings (guard.detection.boxes)."""
        if self.boxes is None:
            raise ValueError(f"{self.directory} is not a detection model")
        return decode(torch.as_tensor(np.asarray(raw, np.float32)), self.boxes)


def read_image_model(reader: TableReader, key: str) -> ImageModel:
    """The model directory `key` names, checked for what the evaluation needs: one BYTES input with
        the `images` preprocessor, the logits_output first among the outputs and of a fixed shape, an
        ONNX file that runs as torch (the attack differentiates through it). Per-camera baselines need
    frames that say their camera (load_plan checks [data] cameras)."""
    value = reader.get(key, str, expected="a model directory (config.toml + model.onnx)")
    directory = reader.directory / value
    if not (directory / "config.toml").is_file():
        raise reader.fail(key, f"a model directory holding config.toml in {reader.directory}", value)
    config = load_model_config(directory, calibrated=False)  # its own errors name config.toml and the key
    preprocess = config.preprocess
    source = config.inputs[0]
    if len(config.inputs) != 1 or source.datatype != "BYTES" or preprocess is None or preprocess.kind != "images":
        raise reader.fail(
            key,
            'a model whose one input is BYTES encoded images read by [preprocess] kind = "images" '
            "(a tensor model is named by `onnx`)",
            value,
        )
    built = preprocess.build(source)
    assert isinstance(built, ImagesPreprocessor)  # kind "images" builds one
    output = config.outputs[0]
    if output.name != config.detection.logits_output or any(d < 0 for d in output.shape):
        raise reader.fail(key, "a model whose first output is its logits_output, of a fixed shape", value)
    model = ImageModel(directory, config, built)
    if not model.model_file.is_file():
        raise reader.fail(key, "a model directory whose backend's ONNX file exists", str(model.model_file))
    model.torch_model()  # an op the torch reading lacks fails here, before anything slow starts
    return model
