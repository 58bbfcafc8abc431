"""STRIP (ACSAC 2019): run-time trigger detection by superimposing clean images.

Each input is blended with N held-out clean images (added, unclipped, as in the paper's code) and
the model's mean Shannon entropy over the N blends is measured. A clean input's prediction is
easily disturbed (high entropy); an input carrying a trigger keeps predicting the target class
(low entropy). The score is the entropy deficit log2(classes) - mean entropy, so that larger means
more suspicious like every other detector, and its threshold comes from clean data like theirs.
The N references are fixed per model, so verdicts are deterministic; all N blends of a batch go
to the backend in the pipeline's one call.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guard.detection.detectors.base import IMAGE, Detector, FitData, Outputs
from guard.protocol.settings import Param
from guard.protocol.types import TRIGGER


class StripDetector(Detector):
    kind = "strip"
    verdict = TRIGGER
    input_kinds = (IMAGE,)  # blends add clean images to the input
    parameters = {
        "n": Param(int, 1, 256, default=16),
        "references": Param(str, default="strip_references.npy", artifact=True),
        "seed": Param(int, 0, 2**31 - 1, default=0),
    }
    n: int
    references: str
    seed: int

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.images: torch.Tensor | None = None
        """The N clean references, from `fit` or the references file."""
        if self.directory is not None and (self.directory / self.references).is_file():
            self.images = torch.from_numpy(np.load(self.directory / self.references).astype(np.float32))[: self.n]

    @property
    def num_variants(self) -> int:
        return self.n

    def fit(self, data: FitData) -> None:
        if len(data.x) < self.n:
            raise ValueError(f"strip: needs at least n={self.n} clean images, got {len(data.x)}")
        chosen = np.random.default_rng(self.seed).choice(len(data.x), size=self.n, replace=False)
        self.images = torch.from_numpy(np.asarray(data.x[np.sort(chosen)], np.float32))

    def save(self, directory: Path) -> None:
        np.save(directory / self.references, self._images().numpy())

    def to(self, device: torch.device) -> StripDetector:
        if self.images is not None:
            self.images = self.images.to(device)
        return self

    def variants(self, x: torch.Tensor) -> torch.Tensor:
        blends = x.unsqueeze(0) + self._images().unsqueeze(1)  # [N, B, ...]
        return blends.reshape(-1, *x.shape[1:])

    def _images(self) -> torch.Tensor:
        if self.images is None:
            raise RuntimeError(
                f"{self.kind} {self.name}: no clean references ({self.references} not found in "
                f"{self.directory}; run `guard calibrate`)"
            )
        return self.images

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is n >= 1: the pipeline always hands them over
        p = variants.class_probabilities()  # [N, B, classes]
        entropy = -(p * torch.log2(p.clamp_min(1e-12))).sum(-1).mean(0)
        return (math.log2(p.shape[-1]) - entropy).clamp_min(0.0)
