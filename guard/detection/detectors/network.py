"""Learned detector: a small MLP on the model's penultimate features (the detector subnetworks of ICLR 2017, in spirit).

The network is trained offline on one attack family (`python -m guard_examples.detector_net`), so it has
no `fit`; its weights and the feature standardisation it was trained with live in one .npz in the
model directory. Its threshold is still calibrated on clean data like every other detector's.
The score is -log(1 - p) for the network's probability p of an attack.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from guard.detection.detectors.base import Detector, Outputs
from guard.protocol.settings import Param

# Arrays the .npz holds: standardisation, then Linear(D, H) and Linear(H, 1) in torch's layout.
KEYS = ("mean", "std", "w1", "b1", "w2", "b2")


class DetectorNetwork(Detector):
    kind = "detector_network"
    parameters = {
        "weights": Param(
            str, default="detector_net.npz", artifact=True, hint="train it with `python -m guard_examples.detector_net`"
        )
    }
    needs_features = True
    weights: str

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tensors: dict[str, torch.Tensor] | None = None
        if self.directory is not None and (self.directory / self.weights).is_file():
            with np.load(self.directory / self.weights) as data:
                missing = [k for k in KEYS if k not in data]
                if missing:
                    raise ValueError(f"{self.directory / self.weights}: missing arrays {missing}")
                self.tensors = {k: torch.from_numpy(np.asarray(data[k], np.float32)) for k in KEYS}

    def to(self, device: torch.device) -> DetectorNetwork:
        if self.tensors is not None:
            self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return self

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        logit = self.logit(original.model_features())
        return torch.nn.functional.softplus(logit).clamp_min(torch.finfo(torch.float32).tiny)

    def _weights(self) -> dict[str, torch.Tensor]:
        if self.tensors is None:
            raise RuntimeError(
                f"{self.kind} {self.name}: no weights loaded ({self.weights} not found in "
                f"{self.directory}; run `python -m guard_examples.detector_net`)"
            )
        return self.tensors

    def logit(self, features: torch.Tensor) -> torch.Tensor:
        """The network's pre-sigmoid output. Its score is softplus(logit) = -log(1 - sigmoid(logit)):
        the same order as the network's probability, but it keeps growing where the probability
        saturates at 1, so a combination of detectors can tell a plain attack from a borderline
        one (floored in `score`: scores stay positive)."""
        t = self._weights()
        features = features.flatten(1).float() if features.dim() > 2 else features.float()
        if features.shape[-1] != t["mean"].shape[0]:
            raise RuntimeError(
                f"{self.kind} {self.name}: trained on {t['mean'].shape[0]} features, "
                f"the model gives {features.shape[-1]}"
            )
        z = (features - t["mean"]) / t["std"]
        hidden = torch.relu(z @ t["w1"].T + t["b1"])
        return (hidden @ t["w2"].T + t["b2"]).squeeze(-1)
