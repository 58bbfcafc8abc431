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

from guard.detection.preprocess.base import Prepared
from guard.detection.preprocess.normalised import NormalisedImages
from guard.protocol.spec import TensorSpec


class FramesPreprocessor(NormalisedImages):
    kind = "frames"
    datatypes = ("UINT8",)
    ranks = (3,)
    layout = "NHWC"

    def __init__(self, source: TensorSpec, output: str, **params):
        if source.shape[-1] == -1:
            raise ValueError(f"input '{source.name}': frames need a fixed channel count (shape [H, W, C])")
        self.channels = source.shape[-1]
        super().__init__(source, output, **params)

    def prepare(self, arrays: list[np.ndarray], device: torch.device) -> Prepared:
        rows = []
        for frames in arrays:  # sizes may differ between requests, never within one
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            if x.shape[-2:] != (self.height, self.width):
                x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False)
            rows.append(x.clamp_(0.0, 1.0))
        return Prepared(rows[0] if len(rows) == 1 else torch.cat(rows))
