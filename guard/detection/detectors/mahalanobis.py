"""Feature-space detector: Mahalanobis distance of the penultimate features to the predicted class.

Class-conditional Gaussians with one shared covariance, fitted on clean features
(NeurIPS 2018). Adversarial inputs and inputs carrying a backdoor trigger land in a class while their
features stay unlike that class's clean features, so their distance to it is large.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from guard.detection.detectors.base import Detector, FitData, Outputs, Param


class MahalanobisDetector(Detector):
    kind = "mahalanobis"
    parameters = {"statistics": Param(str, default="mahalanobis.npz", artifact=True)}
    needs_features = True
    statistics: str

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.means = self.precision = None
        if self.directory is not None and (self.directory / self.statistics).is_file():
            with np.load(self.directory / self.statistics) as data:
                self._set(data["means"], data["precision"])

    def _set(self, means: np.ndarray, precision: np.ndarray) -> None:
        self.means = torch.from_numpy(np.asarray(means, np.float32))
        self.precision = torch.from_numpy(np.asarray(precision, np.float32))

    def fit(self, data: FitData) -> None:
        features = np.asarray(data.features, np.float64).reshape(len(data.features), -1)
        labels = data.y if data.y is not None else data.logits.argmax(1)
        classes = data.logits.shape[1]
        # A class no clean sample fell in (a camera never sees most of ImageNet's 1000) gets the
        # mean of all clean features: an input predicted as it is scored by how unlike clean
        # inputs its features are, which is what matters where that class never shows up.
        means = np.tile(features.mean(0), (classes, 1))
        for c in np.unique(labels):
            means[c] = features[labels == c].mean(0)
        # Ledoit-Wolf shrinkage towards a scaled identity: with a few hundred clean samples and as
        # many feature dimensions the sample covariance is noisy or singular (dead ReLU units), and
        # its inverse then exaggerates distances along rarely seen directions, so unseen clean
        # inputs score higher than the calibration ones and the false-positive rate drifts up.
        centred = features - means[labels]
        self._set(means, LedoitWolf(assume_centered=True).fit(centred).precision_)

    def save(self, directory: Path) -> None:
        np.savez(directory / self.statistics, means=self.means.numpy(), precision=self.precision.numpy())

    def to(self, device: torch.device) -> MahalanobisDetector:
        if self.means is not None:
            self.means, self.precision = self.means.to(device), self.precision.to(device)
        return self

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        diff = original.features.flatten(1).float() - self.means[original.logits.argmax(-1)]
        return ((diff @ self.precision) * diff).sum(-1).clamp_min(0.0).sqrt()
