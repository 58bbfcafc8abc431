"""Feature squeezing measured inside the model: how far a squeezed copy of the input moves the
model's features, relative to their size.

Feature squeezing (NDSS 2018) compares the OUTPUTS of an input and its squeeze. An attack that
overshoots (a person hidden with every score driven far below the box threshold, a class pushed
deep past its margin) survives the squeeze at the output: both copies answer the same, and the
output comparison sees nothing. Inside the network it does not survive: the perturbation was
amplified layer by layer to reach that output, and squeezing part of it away moves the features
much further than squeezing a clean frame's texture does.

The score is ||f(x) - f(squeeze(x))|| / ||f(x)|| on the model's features (`features_output`: a
backbone map for a detector, the penultimate layer for a classifier). Its level depends on the
scene (a cartoon's flat regions and a street's texture squeeze differently), and within one camera
it moves with contrast (a bit-depth squeeze takes relatively more from a darker or hazier frame) and
with what passes the camera, further than per-camera baselines follow on the packaged clips: the
camera defaults run it as a monitor (docs/camera-evaluation.md, "Per-camera baselines").
"""

from __future__ import annotations

import torch

from guard.detection.detectors.base import CLASSIFICATION, DETECTION, Outputs
from guard.detection.detectors.squeezing import SqueezedCopyDetector


class FeatureSqueezeDetector(SqueezedCopyDetector):
    kind = "squeeze_features"
    output_kinds = (CLASSIFICATION, DETECTION)  # it reads features only
    needs_features = True

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is 1: the pipeline always hands them over
        ours = original.model_features().flatten(1).float()
        theirs = variants.model_features()[0].flatten(1).float()
        moved: torch.Tensor = (ours - theirs).norm(dim=1) / ours.norm(dim=1).clamp_min(1e-12)
        return moved
