"""The detector interface: what a detector asks the backend to run, and how it scores the result.

The pipeline gives every detector the guarded input of a whole batch. A detector may return
extra variants of it (squeezed copies, blends); the pipeline runs the original and every
detector's variants in ONE backend call and hands each detector its slice of the outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from guard.types import ADVERSARIAL


@dataclass(frozen=True)
class Outputs:
    """Backend outputs for one group of rows, as torch tensors on the guard's device."""

    logits: torch.Tensor
    """[B, classes] for the original; [V, B, classes] for a detector's V variants."""
    probabilities: torch.Tensor
    """softmax(logits), computed once per batch for every detector."""


class Detector(ABC):
    """One detector: calibrated on clean data to its own threshold (score >= threshold flags)."""

    kind: str = ""
    """The `type` key that selects this class in a model config."""
    verdict: str = ADVERSARIAL
    """What a flag from this detector means: ADVERSARIAL or TRIGGER."""

    def __init__(self, name: str, threshold: float | None):
        self.name = name
        self.threshold = threshold

    @property
    def num_variants(self) -> int:
        """How many variants of each input this detector needs the backend to run."""
        return 0

    def variants(self, x: torch.Tensor) -> torch.Tensor:
        """[V*B, ...] variants of the batch x ([B, ...]), variant-major; empty when V is 0."""
        return x[:0]

    @abstractmethod
    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        """[B] scores, larger meaning more suspicious."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """The config table that recreates this detector (threshold included)."""
