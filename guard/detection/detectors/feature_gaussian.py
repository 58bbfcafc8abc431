"""Feature-space outlier score for any model: distance of its features to ONE Gaussian fitted on
clean features (Ledoit-Wolf shrinkage covariance).

Mahalanobis' class-conditional Gaussians need a class per input; a detector of objects has none,
and a patch or perturbation aimed at it still moves the backbone's features away from where clean
frames put them. Feature maps ([C, H, W]) are average-pooled over space first: the statistic is
about what the frame contains, wherever it is, and C stays small enough to estimate a covariance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from guard.detection.detectors.base import CLASSIFICATION, DETECTION, IMAGE, TENSOR, TEXT, Detector, FitData, Outputs
from guard.detection.detectors.mahalanobis import distance
from guard.protocol.settings import Param


def pooled(features: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W...] -> [B, C] by spatial mean; [B, D] unchanged."""
    return features.flatten(2).mean(-1) if features.dim() > 2 else features


class Gaussian(NamedTuple):
    mean: torch.Tensor
    """[C]: the mean pooled clean features."""
    precision: torch.Tensor
    """[C, C]: the inverse of their (shrunk) covariance."""


class FeatureGaussianDetector(Detector):
    kind = "feature_gaussian"
    output_kinds = (CLASSIFICATION, DETECTION)  # it reads features only
    input_kinds = (IMAGE, TENSOR, TEXT)  # ... never the rows
    parameters = {"statistics": Param(str, default="feature_gaussian.npz", artifact=True)}
    needs_features = True
    statistics: str

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.gaussian: Gaussian | None = None
        if self.directory is not None and (self.directory / self.statistics).is_file():
            with np.load(self.directory / self.statistics) as data:
                self._set(data["mean"], data["precision"])

    def _set(self, mean: np.ndarray, precision: np.ndarray) -> None:
        self.gaussian = Gaussian(
            torch.from_numpy(np.asarray(mean, np.float32)), torch.from_numpy(np.asarray(precision, np.float32))
        )

    def _fitted(self) -> Gaussian:
        if self.gaussian is None:
            raise RuntimeError(
                f"{self.kind} {self.name}: not fitted ({self.statistics} not found in "
                f"{self.directory}; run `guard calibrate`)"
            )
        return self.gaussian

    def fit(self, data: FitData) -> None:
        features = pooled(torch.from_numpy(np.asarray(data.features, np.float32))).double().numpy()
        mean = features.mean(0)
        self._set(mean, LedoitWolf(assume_centered=True).fit(features - mean).precision_)

    def save(self, directory: Path) -> None:
        gaussian = self._fitted()
        np.savez(directory / self.statistics, mean=gaussian.mean.numpy(), precision=gaussian.precision.numpy())

    def to(self, device: torch.device) -> FeatureGaussianDetector:
        if self.gaussian is not None:
            self.gaussian = Gaussian(*(t.to(device) for t in self.gaussian))
        return self

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        mean, precision = self._fitted()
        diff = pooled(original.model_features()).float() - mean
        return distance(diff, precision)
