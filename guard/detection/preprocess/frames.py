"""UINT8 frames as cameras send them (N x H x W x C, any size) -> the model's FP32 N x C x H x W.

Each request's frames are scaled to [0, 1] and stretched to the model's height x width by the
`images` preprocessing's own resize (guard.detection.preprocess.resizing: bilinear, half-pixel
centres, antialiased when shrinking): that is the guarded tensor the squeezers and blends work on.
`finish` then normalises with the config's mean and std, for every row the backend runs, originals
and variants alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from guard.detection.preprocess.base import Prepared
from guard.detection.preprocess.normalised import NormalisedImages
from guard.detection.preprocess.resizing import fit
from guard.protocol.spec import TensorSpec


class FramesPreprocessor(NormalisedImages):
    kind = "frames"
    datatypes = ("UINT8",)
    ranks = (3,)
    layout = "NHWC"

    def __init__(self, source: TensorSpec, output: str, **params: Any):
        if source.shape[-1] == -1:
            raise ValueError(f"input '{source.name}': frames need a fixed channel count (shape [H, W, C])")
        self.channels = source.shape[-1]
        super().__init__(source, output, **params)

    def prepare(self, arrays: list[np.ndarray], device: torch.device) -> Prepared:
        rows = []
        for frames in arrays:  # sizes may differ between requests, never within one
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            rows.append(fit(x, "stretch", self.height, self.width))
        return Prepared(rows[0] if len(rows) == 1 else torch.cat(rows))
