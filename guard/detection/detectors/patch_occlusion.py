"""Localised adversarial patches: find the frame's most textured region and see whether hiding it
changes the model's answer.

A printed adversarial patch (CVPR-W 2019 against person detectors; the 2017 adversarial patch
against classifiers) is high-frequency, high-entropy texture concentrated in one region, and the
model's answer rests on it. Jedi (CVPR 2023) localises patches by their high local
entropy; here the window of highest local entropy (grey levels quantised to `levels`, windows a
`window` fraction of the shorter side) is occluded with the frame's mean colour, and the model
runs on that copy in the same backend call as everything else. The score is how much the answer
moves: the L1 distance between the two softmax outputs for a classifier, the boxes' disagreement
(guard.detection.boxes) for a detector. On a clean frame the most textured region is rarely what
the whole answer rests on. Occlusion rather than Jedi's learned inpainting: one extra row per
frame, no second network, and nothing to train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from guard.detection.boxes import disagreements
from guard.detection.detectors.base import CLASSIFICATION, DETECTION, IMAGE, Detector, Outputs
from guard.protocol.settings import Param

ANALYSIS_SIDE = 128
"""Entropy is measured on a copy at most this many pixels a side: enough to find a patch, and the
[levels, H, W] histogram stays small."""


def entropy_windows(x: torch.Tensor, window: float, levels: int) -> tuple[torch.Tensor, int, tuple[int, int]]:
    """Local entropy ([B, rows, cols], bits) of windows over the grey image, the window's side and
    the analysed copy's size (windows step by half their side)."""
    grey = x.float().mean(1, keepdim=True)
    scale = min(1.0, ANALYSIS_SIDE / max(grey.shape[-2:]))
    if scale < 1.0:
        grey = F.interpolate(grey, scale_factor=scale, mode="area")
    side = max(2, round(window * min(grey.shape[-2:])))
    quantised = (grey[:, 0] * (levels - 1)).round().clamp_(0, levels - 1).long()
    onehot = F.one_hot(quantised, levels).permute(0, 3, 1, 2).float()
    histogram = F.avg_pool2d(onehot, side, stride=max(1, side // 2))
    entropy = -(histogram * torch.log2(histogram.clamp_min(1e-12))).sum(1)
    return entropy, side, (grey.shape[-2], grey.shape[-1])


def occlude_most_textured(x: torch.Tensor, window: float, levels: int) -> torch.Tensor:
    """x with its highest-entropy window filled with each image's mean colour."""
    entropy, side, (height, width) = entropy_windows(x, window, levels)
    stride = max(1, side // 2)
    best = entropy.reshape(len(x), -1).argmax(1)
    top, left = (best // entropy.shape[-1]) * stride, (best % entropy.shape[-1]) * stride
    to_y, to_x = x.shape[-2] / height, x.shape[-1] / width  # analysed copy -> frame pixels
    ys = torch.arange(x.shape[-2], device=x.device)[None, :]
    xs = torch.arange(x.shape[-1], device=x.device)[None, :]
    inside_y = (ys >= top[:, None] * to_y) & (ys < (top[:, None] + side) * to_y)
    inside_x = (xs >= left[:, None] * to_x) & (xs < (left[:, None] + side) * to_x)
    mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]  # [B, 1, H, W]
    return torch.where(mask, x.mean(dim=(-2, -1), keepdim=True), x)


class PatchOcclusionDetector(Detector):
    kind = "patch_occlusion"
    input_kinds = (IMAGE,)
    output_kinds = (CLASSIFICATION, DETECTION)
    parameters = {
        "window": Param(float, 0.02, 1.0, default=0.25),
        "levels": Param(int, 2, 256, default=16),
        "iou": Param(float, 0.05, 1.0, default=0.5),
        "floor": Param(float, 0.0, 1.0, default=0.05),
    }
    window: float
    """The occluded window's side, as a fraction of the frame's shorter side."""
    levels: int
    iou: float
    floor: float
    """Boxes scoring at least this take part in the comparison (guard.detection.boxes.disagreements)."""

    @property
    def num_variants(self) -> int:
        return 1

    def variants(self, x: torch.Tensor) -> torch.Tensor:
        return occlude_most_textured(x, self.window, self.levels)

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is 1: the pipeline always hands them over
        if original.boxes is None:
            return (original.class_probabilities() - variants.class_probabilities()[0]).abs().sum(dim=-1)
        return disagreements(original.logits, variants.logits[0], original.boxes, self.floor, self.iou)
