"""The `digits` demo CNN."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FEATURE_DIM = 64


class DigitsNet(nn.Module):
    """Small CNN for [N,1,16,16] inputs in [0,1]; `features` is the penultimate 64-d layer."""

    def __init__(self, dropout: float = 0.0, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(32 * 4 * 4, FEATURE_DIM), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (post-ReLU) activations, shape [N, 64]."""
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


STANDARD_WEIGHTS = Path(__file__).resolve().parent / "artifacts" / "digits_fp32.pt"


def load_digits_net(path: Path = STANDARD_WEIGHTS) -> DigitsNet:
    """A DigitsNet in eval mode with saved weights (default: the standard FP32 model)."""
    model = DigitsNet()
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    return model.eval()
