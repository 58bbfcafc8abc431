"""Feature-space detector: Mahalanobis distance of the penultimate features to the predicted class.

Class-conditional Gaussians with one shared covariance, fitted on clean features
(NeurIPS 2018). Adversarial inputs and inputs carrying a backdoor trigger land in a class while their
features stay unlike that class's clean features, so their distance to it is large.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from guard.detection.detectors.base import IMAGE, TENSOR, TEXT, Detector, FitData, Outputs
from guard.protocol.settings import Param


class ClassGaussians(NamedTuple):
    means: torch.Tensor
    """[classes, D]: each class's mean clean features."""
    precision: torch.Tensor
    """[D, D]: the inverse of the covariance all classes share."""


def class_means(features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """[classes, D]: each class's mean row. A class no clean sample fell in (a camera never sees most
    of ImageNet's 1000) gets the mean of all clean rows: an input predicted as it is scored by how
    unlike clean inputs it is, which is what matters where that class never shows up."""
    means = np.tile(features.mean(0), (classes, 1))
    for c in np.unique(labels):
        means[c] = features[labels == c].mean(0)
    return means


def distance(diff: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """[B]: the Mahalanobis length of each row of `diff` under `precision` (rounding kept from
    going below zero)."""
    return ((diff @ precision) * diff).sum(-1).clamp_min(0.0).sqrt()


class MahalanobisDetector(Detector):
    kind = "mahalanobis"
    parameters = {"statistics": Param(str, default="mahalanobis.npz", artifact=True)}
    needs_features = True
    input_kinds = (IMAGE, TENSOR, TEXT)  # it reads features and logits only, never the rows
    statistics: str

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.gaussians: ClassGaussians | None = None
        if self.directory is not None and (self.directory / self.statistics).is_file():
            with np.load(self.directory / self.statistics) as data:
                self._set(data["means"], data["precision"])

    def _set(self, means: np.ndarray, precision: np.ndarray) -> None:
        self.gaussians = ClassGaussians(
            torch.from_numpy(np.asarray(means, np.float32)), torch.from_numpy(np.asarray(precision, np.float32))
        )

    def _fitted(self) -> ClassGaussians:
        if self.gaussians is None:
            raise RuntimeError(
                f"{self.kind} {self.name}: not fitted ({self.statistics} not found in "
                f"{self.directory}; run `guard calibrate`)"
            )
        return self.gaussians

    def fit(self, data: FitData) -> None:
        features = np.asarray(data.features, np.float64)
        features = features.reshape(len(features), -1)
        labels = data.y if data.y is not None else data.logits.argmax(1)
        means = class_means(features, labels, data.logits.shape[1])
        # Ledoit-Wolf shrinkage towards a scaled identity: with a few hundred clean samples and as
        # many feature dimensions the sample covariance is noisy or singular (dead ReLU units), and
        # its inverse then exaggerates distances along rarely seen directions, so unseen clean
        # inputs score higher than the calibration ones and the false-positive rate drifts up.
        centred = features - means[labels]
        self._set(means, LedoitWolf(assume_centered=True).fit(centred).precision_)

    def save(self, directory: Path) -> None:
        gaussians = self._fitted()
        np.savez(directory / self.statistics, means=gaussians.means.numpy(), precision=gaussians.precision.numpy())

    def to(self, device: torch.device) -> MahalanobisDetector:
        if self.gaussians is not None:
            self.gaussians = ClassGaussians(*(t.to(device) for t in self.gaussians))
        return self

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        means, precision = self._fitted()
        diff = original.model_features().flatten(1).float() - means[original.logits.argmax(-1)]
        return distance(diff, precision)
