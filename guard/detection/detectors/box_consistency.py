"""Box consistency: does a detection model find the same objects on a squeezed copy of the frame?

The detection-model counterpart of feature squeezing. A clean frame's boxes survive a mild
squeeze (a few bits of depth less, a 2x2 median): the same objects, the same places, similar
scores. A perturbation optimised against the detector (making persons vanish, or appear) is
brittle under the squeeze, so the boxes found on the two copies disagree. The score is
guard.detection.boxes.disagreement: the largest change of any object's score between the copies,
in [0, 1]. An attack that overshoots (every score driven far below the threshold) can survive the
squeeze at the output; squeeze_features (guard.detection.detectors.feature_squeeze) sees it inside
the model.
"""

from __future__ import annotations

import torch

from guard.detection.boxes import disagreements
from guard.detection.detectors.base import DETECTION, Outputs
from guard.detection.detectors.squeezing import SqueezedCopyDetector
from guard.protocol.settings import Param


class BoxConsistencyDetector(SqueezedCopyDetector):
    kind = "box_consistency"
    output_kinds = (DETECTION,)
    parameters = {
        **SqueezedCopyDetector.parameters,
        "iou": Param(float, 0.05, 1.0, default=0.5),
        "floor": Param(float, 0.0, 1.0, default=0.05),
    }
    iou: float
    floor: float
    """Boxes scoring at least this take part in the comparison (guard.detection.boxes.disagreements)."""

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is 1: the pipeline always hands them over
        return disagreements(original.logits, variants.logits[0], original.box_settings(), self.floor, self.iou)
