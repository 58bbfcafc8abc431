"""The detector interface: what a detector asks the backend to run, and how it scores the result.

The pipeline gives every detector the guarded input of a whole batch. A detector may return
extra variants of it (squeezed copies, blends); the pipeline runs the original and every
detector's variants in ONE backend call and hands each detector its slice of the outputs.
Detectors that learn clean statistics (class means, reference images, a small network) do so in
`fit`, and keep what they learned as artifacts in the model's directory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from guard.detection.boxes import BoxSettings
from guard.detection.texts import TextRows
from guard.protocol.settings import Param
from guard.protocol.types import ADVERSARIAL

IMAGE, TENSOR, TEXT = "image", "tensor", "text"
"""Input kinds: IMAGE is a float [C, H, W] tensor with values in [0, 1] (what squeezers and blends
assume); TENSOR is any numeric tensor; TEXT is a string per row (guard.detection.texts), which the
preprocessor tokenizes after the variants are made. guard.detection.settings tells which a model's
guarded input is."""
CLASSIFICATION, DETECTION = "classification", "detection"
"""Output kinds: CLASSIFICATION is [classes] logits per row; DETECTION is raw boxes per row in a
declared format (guard.detection.boxes)."""


@dataclass(frozen=True)
class Outputs:
    """Backend outputs for one group of rows, as torch tensors on the guard's device."""

    logits: torch.Tensor
    """The model's output the detectors read: [B, classes] logits for the original and [V, B,
    classes] for a detector's V variants; for a detection model its raw boxes ([B, A, 5 + C]...)."""
    probabilities: torch.Tensor | None
    """softmax(logits), computed once per batch for every detector; None for detection models."""
    features: torch.Tensor | None = None
    """Features ([B, D...] or [V, B, D...]) when the model exposes them: penultimate for a
    classifier, a backbone map for a detector."""
    boxes: BoxSettings | None = None
    """A detection model's box format and thresholds (guard.detection.boxes)."""

    def class_probabilities(self) -> torch.Tensor:
        """`probabilities`, for detectors of classifiers: only a detection model's outputs lack them,
        and detectors are built for the output kinds they declare."""
        if self.probabilities is None:
            raise ValueError("these outputs have no class probabilities (a detection model's)")
        return self.probabilities

    def box_settings(self) -> BoxSettings:
        """`boxes`, for detectors of detection models: the pipeline hands them to every detector of
        a model with `output_kind = "detection"`, and detectors are built for the kinds they declare."""
        if self.boxes is None:
            raise ValueError("these outputs have no box settings (a classifier's)")
        return self.boxes

    def model_features(self) -> torch.Tensor:
        """`features`, for detectors that declare needs_features: the pipeline refuses to run them
        without a features output."""
        if self.features is None:
            raise ValueError("these outputs have no features (the model's features_output is not set)")
        return self.features


@dataclass(frozen=True)
class FitData:
    """Clean samples a detector may learn from (never the samples its threshold is set on)."""

    x: np.ndarray
    y: np.ndarray | None
    logits: np.ndarray
    features: np.ndarray | None


class Detector(ABC):
    """One detector: calibrated on clean data to its own threshold (score >= threshold flags)."""

    kind: ClassVar[str] = ""
    """The `type` key that selects this class in a model config."""
    verdict: ClassVar[str] = ADVERSARIAL
    """What a flag from this detector means: ADVERSARIAL or TRIGGER."""
    parameters: ClassVar[dict[str, Param]] = {}
    needs_features: ClassVar[bool] = False
    input_kinds: ClassVar[tuple[str, ...]] = (IMAGE, TENSOR)
    """The guarded input kinds it can examine; checked when a model's detectors are built."""
    output_kinds: ClassVar[tuple[str, ...]] = (CLASSIFICATION,)

    def __init__(
        self, name: str, threshold: float | None, directory: Path | None = None, monitor: bool = False, **params: Any
    ):
        self.name = name
        self.threshold = threshold
        self.directory = directory
        self.monitor = monitor
        """Scored, exported and explained, but never part of a verdict or the ensemble's budget:
        how a new detector is tried on live traffic before it may block anything."""
        for key, spec in self.parameters.items():  # built directly (not from a config): defaults apply
            if key not in params and spec.default is not ...:
                params[key] = spec.default
        for key, value in params.items():
            setattr(self, key, value)

    def calibrated_threshold(self) -> float:
        """`threshold`, which serving requires (calibration builds detectors without one)."""
        if self.threshold is None:
            raise ValueError(f"detector {self.name} has no threshold (run `guard calibrate`)")
        return self.threshold

    @property
    def learns(self) -> bool:
        """Whether it fits statistics on clean samples (`fit`): its thresholds must then come from
        samples it was not fitted on (guard.detection.calibration.derive cross-fits)."""
        return type(self).fit is not Detector.fit

    @property
    def num_variants(self) -> int:
        """How many variants of each input this detector needs the backend to run."""
        return 0

    def variants(self, x: torch.Tensor) -> torch.Tensor:
        """[V*B, ...] variants of the batch x ([B, ...]), variant-major; empty when V is 0."""
        return x[:0]

    def text_variants(self, x: TextRows) -> TextRows:
        """[V*B] variants of a batch of text (variant-major), for detectors of TEXT inputs; the
        preprocessor tokenizes them with the originals, in the same backend call."""
        return x[:0]

    def differentiable_variants(self, x: torch.Tensor) -> torch.Tensor:
        """The variants as an attacker differentiates through them (guard.tools.evaluation.adaptive):
        the same values, with a straight-through gradient where the true one is zero almost everywhere."""
        return self.variants(x)

    @abstractmethod
    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        """[B] scores, larger meaning more suspicious."""

    def suspects(self, rows: TextRows, original: Outputs, variants: Outputs | None) -> list[list[str]] | None:
        """Text detectors: per row, the words whose edit moved the prediction (what guard_explain
        names); None for a detector that blames no words."""
        return None

    def fit(self, data: FitData) -> None:
        """Learn clean statistics; the default detector needs none."""

    def save(self, directory: Path) -> None:
        """Write the artifacts `fit` produced; the default detector has none."""

    def to(self, device: torch.device) -> Detector:
        """Move learned tensors to the guard's device; the default detector has none."""
        return self

    def to_config(self) -> dict[str, Any]:
        """The config table that recreates this detector (threshold included)."""
        table: dict[str, Any] = {"name": self.name, "type": self.kind}
        table.update({key: getattr(self, key) for key in self.parameters})
        if self.monitor:
            table["monitor"] = True
        return {**table, "threshold": self.threshold}
