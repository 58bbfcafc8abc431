"""An example guard plugin: the noise-sensitivity detector, registered under the entry-point
group `guard.detectors` (see pyproject.toml) and built on guard's public detector interface only.

Adversarial examples sit just past a decision boundary the attack pushed them over, so a little
random noise moves the model's answer on them far more than on clean inputs ("A New Defense
Against Adversarial Images: Turning a Weakness into a Strength", NeurIPS 2019; "The Odds are Odd",
ICML 2019). The score is the L1 distance between the softmax of an image and of
one noisy copy of it, `clip(x + sigma * noise, 0, 1)`. The noise is one standard normal pattern the
size of an image, drawn from `seed` and added to every row: a row's score depends on that row alone,
never on what shares its batch, as the threshold calibrated on clean rows assumes.

    [[detectors]]
    name = "noise"
    type = "noise_sensitivity"
    sigma = 0.05         # the noise's standard deviation, in the image's [0, 1] units
    seed = 0
"""

from __future__ import annotations

import torch

from guard.api import IMAGE, Detector, Outputs, Param


class NoiseSensitivityDetector(Detector):
    kind = "noise_sensitivity"
    input_kinds = (IMAGE,)  # the noise is clipped to the image's [0, 1] range
    parameters = {
        "sigma": Param(float, 0.001, 1.0, default=0.05),
        "seed": Param(int, 0, 2**31 - 1, default=0),
    }
    sigma: float
    seed: int

    @property
    def num_variants(self) -> int:
        return 1

    def variants(self, x: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        noise = torch.randn(x.shape[1:], generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(0.0, 1.0)

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is 1: the pipeline always hands them over
        return (original.class_probabilities() - variants.class_probabilities()[0]).abs().sum(dim=-1)
