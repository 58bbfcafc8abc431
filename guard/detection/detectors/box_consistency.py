"""Box consistency: does a detection model find the same objects on a squeezed copy of the frame?

The detection-model counterpart of feature squeezing. A clean frame's boxes survive a mild
squeeze (a few bits of depth less, a 2x2 median): the same objects, the same places, similar
scores. A perturbation optimised against the detector (making persons vanish, or appear) is
brittle under the squeeze, so the boxes found on the two copies disagree. The score is
guard.detection.boxes.disagreement: 1 - F1 of the boxes matched one-to-one (same class, IoU >=
`iou`) plus the mean score change of the matched pairs, in [0, 2].
"""

from __future__ import annotations

import torch

from guard.detection import squeezers
from guard.detection.boxes import decode, disagreement
from guard.detection.detectors.base import DETECTION, IMAGE, Detector, Outputs
from guard.protocol.settings import Param


class BoxConsistencyDetector(Detector):
    kind = "box_consistency"
    input_kinds = (IMAGE,)
    output_kinds = (DETECTION,)
    parameters = {
        "bits": Param(int, 0, 16, default=5),
        "median": Param(int, 1, 15, default=2),
        "iou": Param(float, 0.05, 1.0, default=0.5),
    }
    bits: int
    """Bit depth of the squeezed copy (0: no bit-depth squeeze)."""
    median: int
    """Median filter size of the squeezed copy (1: none)."""
    iou: float

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
        return x + (self.squeeze(x) - x).detach()

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        ours, theirs = decode(original.logits, original.boxes), decode(variants.logits[0], original.boxes)
        return torch.tensor([disagreement(a, b, self.iou) for a, b in zip(ours, theirs)],
                            device=original.logits.device)
