"""UINT8 frames as cameras send them (N x H x W x C, any size) -> the model's FP32 N x C x H x W.

Each request's frames are resized to the model's height x width (bilinear, half-pixel centres,
like torchvision's Resize without antialiasing) and scaled to [0, 1]: that is the guarded tensor
the squeezers and blends work on. `finish` then normalises with the config's mean and std, for
every row the backend runs, originals and variants alike.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from guard.detection.preprocess.base import Preprocessor
from guard.protocol.settings import Param
from guard.protocol.spec import TensorSpec


class FramesPreprocessor(Preprocessor):
    kind = "frames"
    datatypes = ("UINT8",)
    rank = 3
    layout = "NHWC"
    parameters = {
        "height": Param(int, 1, 8192),
        "width": Param(int, 1, 8192),
        "mean": Param(list, default=[0.0]),
        "std": Param(list, default=[1.0]),
    }
    height: int
    width: int
    mean: list[float]
    std: list[float]

    def __init__(self, source: TensorSpec, output: str, **params):
        super().__init__(source, output, **params)
        self.channels = source.shape[-1]
        if self.channels == -1:
            raise ValueError(f"input '{source.name}': frames need a fixed channel count (shape [H, W, C])")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(f"preprocess.{name}: one value or one per channel ({self.channels}), "
                                 f"got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocess.std: positive values, got {self.std}")
        self._scale: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def guarded_spec(self) -> TensorSpec:
        return TensorSpec(self.output, "FP32", (self.channels, self.height, self.width), (0.0, 1.0), "NCHW")

    def model_spec(self) -> TensorSpec:
        return TensorSpec(self.output, "FP32", (self.channels, self.height, self.width), None, "NCHW")

    def prepare(self, arrays: list[np.ndarray], device: torch.device) -> torch.Tensor:
        rows = []
        for frames in arrays:  # sizes may differ between requests, never within one
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            if x.shape[-2:] != (self.height, self.width):
                x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False)
            rows.append(x.clamp_(0.0, 1.0))
        return rows[0] if len(rows) == 1 else torch.cat(rows)

    def finish(self, guarded: torch.Tensor) -> torch.Tensor:
        if guarded.device not in self._scale:
            shape = (1, -1, 1, 1)
            self._scale[guarded.device] = (torch.tensor(self.mean, device=guarded.device).view(shape),
                                           torch.tensor(self.std, device=guarded.device).view(shape))
        mean, std = self._scale[guarded.device]
        return (guarded - mean) / std
