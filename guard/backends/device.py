"""Where the guard's own tensor work runs: CUDA when present, CPU otherwise."""

from __future__ import annotations

import torch

from guard.protocol.errors import ConfigError


def select_device(preference: str = "auto") -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        raise ConfigError("device", "device", "a host with CUDA (none is available)", preference)
    return torch.device("cpu")
