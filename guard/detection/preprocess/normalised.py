"""What image preprocessors share: a fixed height x width, the [0, 1] guarded image the detectors
examine, and per-channel mean/std normalisation applied afterwards to every row the model runs
(squeezers and blends must see pixels, not normalised values)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from guard.detection.preprocess.base import Preprocessor
from guard.protocol.settings import Param
from guard.protocol.spec import TensorSpec

QUERY_SIDE = 32
"""Side of the thumbnail query-attack fingerprints read (NormalisedImages.query_rows)."""


class NormalisedImages(Preprocessor):
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
    channels: int = 3

    def __init__(self, source: TensorSpec, output: str, **params: Any):
        super().__init__(source, output, **params)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"preprocess.{name}: one value or one per channel ({self.channels}), got {len(values)}"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocess.std: positive values, got {self.std}")
        self._scale: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def query_rows(self, guarded: torch.Tensor) -> np.ndarray:
        """Each frame averaged down to QUERY_SIDE x QUERY_SIDE per channel: every query of a black-box
        attack on a frame is the frame plus a small change, and the thumbnail keeps the change's
        large-scale part while sensor noise and JPEG blocks average away. Cheap next to the model
        (a pooling of the batch already on the device) and a fixed size for any frame size."""
        side = (min(QUERY_SIDE, guarded.shape[-2]), min(QUERY_SIDE, guarded.shape[-1]))
        pooled = torch.nn.functional.adaptive_avg_pool2d(guarded.float(), side)
        return pooled.flatten(1).cpu().numpy()

    def guarded_spec(self) -> TensorSpec:
        return TensorSpec(self.output, "FP32", (self.channels, self.height, self.width), (0.0, 1.0), "NCHW")

    def model_spec(self) -> TensorSpec:
        return TensorSpec(self.output, "FP32", (self.channels, self.height, self.width), None, "NCHW")

    def finish(self, guarded: torch.Tensor) -> torch.Tensor:
        if guarded.device not in self._scale:
            shape = (1, -1, 1, 1)
            self._scale[guarded.device] = (
                torch.tensor(self.mean, device=guarded.device).view(shape),
                torch.tensor(self.std, device=guarded.device).view(shape),
            )
        mean, std = self._scale[guarded.device]
        return (guarded - mean) / std
