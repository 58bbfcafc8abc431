"""Feature-squeezing detectors: L1 distance between the softmax of an input and of its squeeze.

One detector per squeezer, each calibrated to its own threshold; the ensemble (guard.detection.thresholds)
combines them with false-positive control instead of a raw max over squeezers, which would let
the noisiest squeezer set the threshold.
"""

from __future__ import annotations

import torch

from guard.detection import squeezers
from guard.detection.detectors.base import IMAGE, Detector, Outputs
from guard.protocol.settings import Param


class SqueezeDetector(Detector):
    input_kinds = (IMAGE,)  # squeezers quantise and filter [0, 1] images

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def num_variants(self) -> int:
        return 1

    def variants(self, x: torch.Tensor) -> torch.Tensor:
        return self.squeeze(x)

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is 1: the pipeline always hands them over
        return (original.class_probabilities() - variants.class_probabilities()[0]).abs().sum(dim=-1)


class BitDepthDetector(SqueezeDetector):
    """Squeeze by reducing [0, 1] inputs to `bits` bits per value (paper: 1 for MNIST, 5 for CIFAR)."""

    kind = "squeeze_bit_depth"
    parameters = {"bits": Param(int, 1, 16)}
    bits: int

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        return squeezers.bit_depth(x, self.bits)

    def differentiable_variants(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.squeeze(x) - x).detach()  # rounding: straight-through


class MedianDetector(SqueezeDetector):
    """Squeeze with a size x size median filter (paper: 2x2 for MNIST and CIFAR-10)."""

    kind = "squeeze_median"
    parameters = {"size": Param(int, 1, 15)}
    size: int

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        return squeezers.median(x, self.size)


class SqueezedCopyDetector(Detector):
    """The base of detectors that run the model on ONE squeezed copy of each input (`bits`-bit depth,
    then a `median` filter) and compare what it answers with something other than the softmax: boxes
    (box_consistency), features (squeeze_features)."""

    input_kinds = (IMAGE,)
    parameters = {
        "bits": Param(int, 0, 16, default=5),
        "median": Param(int, 1, 15, default=2),
    }
    bits: int
    """Bit depth of the squeezed copy (0: no bit-depth squeeze)."""
    median: int
    """Median filter size of the squeezed copy (1: none)."""

    @property
    def num_variants(self) -> int:
        return 1

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits:
            x = squeezers.bit_depth(x, self.bits)
        return squeezers.median(x, self.median)

    def variants(self, x: torch.Tensor) -> torch.Tensor:
        return self.squeeze(x)

    def differentiable_variants(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.squeeze(x) - x).detach()  # rounding: straight-through
