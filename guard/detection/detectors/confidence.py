"""Low-confidence detector: how close the model's top two classes are.

Minimal-perturbation attacks (CW with kappa 0, DeepFool) stop just past the decision boundary,
where the top two probabilities are nearly equal; squeezers and feature statistics see little
there. The score is 1 - (p_top1 - p_top2), in [0, 1]; it needs no extra rows and no artifacts.
Clean inputs the model finds hard score high too, which calibration on clean data accounts for.
"""

from __future__ import annotations

import torch

from guard.detection.detectors.base import IMAGE, TENSOR, TEXT, Detector, Outputs


class ConfidenceMarginDetector(Detector):
    kind = "confidence_margin"
    input_kinds = (IMAGE, TENSOR, TEXT)  # it reads the probabilities only, never the rows

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        top = original.class_probabilities().topk(2, dim=-1).values
        return 1.0 - (top[..., 0] - top[..., 1])
